/* digits_app.c: the digits MLP from C, through the library `kiln build` makes.
 *
 *   kiln train examples/digits_mlp.kiln
 *   kiln build examples/digits_mlp.kiln --weights digits_mlp.safetensors -o lib
 *   cc examples/c/digits_app.c -I lib lib/libdigits_mlp.a -lm -lpthread -ldl -o app
 *   ./app examples/data/digits_test.csv
 *
 * Reads a digits CSV file (a header line, then 64 pixels and the label per row),
 * classifies every row with digits_mlp_predict, then fine-tunes a training context on the
 * rows for a few passes and classifies them again with the tuned parameters. */
#include <stdio.h>
#include <stdlib.h>
#include "digits_mlp.h"

enum { PIXELS = DIGITS_MLP_INPUT_0_SIZE, CLASSES = DIGITS_MLP_OUTPUT_0_SIZE, BATCH = 32 };

/* The share of rows whose most probable class is the label. */
static double accuracy(const float *probs, const int64_t *labels, long rows) {
  long right = 0;
  for (long r = 0; r < rows; r++) {
    const float *p = probs + r * CLASSES;
    int best = 0;
    for (int k = 1; k < CLASSES; k++)
      if (p[k] > p[best]) best = k;
    right += best == labels[r];
  }
  return 100.0 * right / rows;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s DIGITS.csv\n", argv[0]);
    return 2;
  }
  FILE *f = fopen(argv[1], "r");
  if (!f) {
    perror(argv[1]);
    return 2;
  }
  long cap = 2048, rows = 0;
  float *pixels = malloc(cap * PIXELS * sizeof(float));
  int64_t *labels = malloc(cap * sizeof(int64_t));
  float *probs = malloc(cap * CLASSES * sizeof(float));
  fscanf(f, "%*[^\n]\n"); /* the header */
  while (rows < cap) {
    float *x = pixels + rows * PIXELS;
    int k = 0;
    while (k < PIXELS && fscanf(f, "%f,", &x[k]) == 1) k++;
    long label;
    if (k < PIXELS || fscanf(f, "%ld", &label) != 1) break;
    labels[rows++] = label;
  }
  fclose(f);

  /* Prediction, one row a call. */
  for (long r = 0; r < rows; r++) {
    const void *in[DIGITS_MLP_NUM_INPUTS] = {pixels + r * PIXELS};
    void *out[DIGITS_MLP_NUM_OUTPUTS] = {probs + r * CLASSES};
    if (digits_mlp_predict(1, in, out) != DIGITS_MLP_OK) return 1;
  }
  printf("%ld rows: accuracy %.1f %%\n", rows, accuracy(probs, labels, rows));

  /* Fine-tuning: three passes of training steps over the rows, BATCH rows a step. */
  digits_mlp_train *ctx = digits_mlp_train_new();
  if (!ctx) return 1;
  for (int pass = 1; pass <= 3; pass++) {
    double sum = 0;
    long steps = 0;
    for (long r = 0; r + BATCH <= rows; r += BATCH, steps++) {
      const void *in[DIGITS_MLP_NUM_INPUTS] = {pixels + r * PIXELS};
      const void *target[DIGITS_MLP_NUM_TARGETS] = {labels + r};
      float loss;
      if (digits_mlp_train_step(ctx, BATCH, in, target, &loss) != DIGITS_MLP_OK) return 1;
      sum += loss;
    }
    printf("pass %d: mean loss %.4f\n", pass, sum / steps);
  }
  const void *in[DIGITS_MLP_NUM_INPUTS] = {pixels};
  void *out[DIGITS_MLP_NUM_OUTPUTS] = {probs};
  if (digits_mlp_predict_ctx(ctx, rows, in, out) != DIGITS_MLP_OK) return 1;
  printf("after fine-tuning on them: accuracy %.1f %%\n", accuracy(probs, labels, rows));
  digits_mlp_train_free(ctx);
  free(pixels);
  free(labels);
  free(probs);
  return 0;
}

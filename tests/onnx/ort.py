#!/usr/bin/env python3
"""Runs ONNX models on ONNX Runtime, for tests/export.rs.

    ort.py MODEL.onnx INPUTS.npz OUTPUTS.npz
    ort.py --manifest JOBS.json

Each job checks the model with `onnx.checker.check_model(onnx.load(MODEL),
full_check=True)`, runs it on ONNX Runtime's CPUExecutionProvider with the arrays of
INPUTS.npz (named like the graph's inputs, each cast to the input's element type:
float32, or int64 for class ids) and writes every graph output, by name, to
OUTPUTS.npz.

With one job, a failure is reported on stderr and the exit status is 1. With
`--manifest`, JOBS.json is a list of objects `{"model": ..., "inputs": ...,
"outputs": ...}`: importing onnxruntime takes about half a second, so one process runs
every job of a test. Each job prints one JSON line on stdout: `{"job": i, "ok": true,
...}` with what the test checks beyond the values (the default domain's opset, the
graph's inputs and outputs with their element types and dimensions, the initializers'
names and shapes), or `{"job": i, "ok": false, "error": "..."}`. The exit status is 1
when a job failed. Usage errors exit with 2.
"""

import json
import sys
import traceback


def usage(message):
    print(f"ort.py: {message}\n{__doc__}", file=sys.stderr)
    sys.exit(2)


try:
    import numpy as np
    import onnx
    import onnxruntime as ort
except ImportError as e:
    print(f"ort.py: {e}: needs onnx, onnxruntime and numpy", file=sys.stderr)
    sys.exit(2)


def dims(value_info):
    """The dimensions of a graph input or output: ints, symbol names, or None."""
    shape = value_info.type.tensor_type.shape
    if not value_info.type.tensor_type.HasField("shape"):
        return None
    out = []
    for d in shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def port(value_info):
    t = value_info.type.tensor_type
    return {
        "name": value_info.name,
        "type": onnx.TensorProto.DataType.Name(t.elem_type).lower(),
        "dims": dims(value_info),
    }


def run(model_path, inputs_path, outputs_path):
    """One job; returns what the test checks beyond the values."""
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    graph_inputs = [i for i in graph.input if i.name not in initializers]

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )

    feed = {}
    with np.load(inputs_path) as arrays:
        for i in graph_inputs:
            if i.name not in arrays.files:
                raise ValueError(
                    f"{inputs_path} has no array `{i.name}` for graph input `{i.name}` "
                    f"(it has: {', '.join(arrays.files)})"
                )
            dtype = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
            feed[i.name] = np.ascontiguousarray(arrays[i.name].astype(dtype))

    names = [o.name for o in session.get_outputs()]
    values = session.run(names, feed)
    np.savez(outputs_path, **dict(zip(names, values)))

    opset = next(
        (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None
    )
    return {
        "opset": opset,
        "inputs": [port(i) for i in graph_inputs],
        "outputs": [port(o) for o in graph.output],
        "initializers": [
            {"name": t.name, "dims": list(t.dims)} for t in graph.initializer
        ],
    }


def main(argv):
    if len(argv) == 3 and argv[1] == "--manifest":
        with open(argv[2], encoding="utf-8") as f:
            jobs = json.load(f)
        if not isinstance(jobs, list):
            usage(f"{argv[2]}: expected a JSON list of jobs")
        failed = False
        for k, job in enumerate(jobs):
            try:
                info = run(job["model"], job["inputs"], job["outputs"])
                line = {"job": k, "ok": True, **info}
            except Exception as e:  # noqa: BLE001 -- every failure is the job's result
                failed = True
                detail = "".join(traceback.format_exception_only(type(e), e)).strip()
                line = {"job": k, "ok": False, "error": detail}
            print(json.dumps(line), flush=True)
        return 1 if failed else 0
    if len(argv) == 4 and not argv[1].startswith("-"):
        try:
            run(argv[1], argv[2], argv[3])
        except Exception as e:  # noqa: BLE001
            detail = "".join(traceback.format_exception_only(type(e), e)).strip()
            print(f"ort.py: {argv[1]}: {detail}", file=sys.stderr)
            return 1
        return 0
    usage("expected MODEL.onnx INPUTS.npz OUTPUTS.npz, or --manifest JOBS.json")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

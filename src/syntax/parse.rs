//! Source text → [`ast::File`], with parse errors worded for people (E01xx).

use super::ast::*;
use crate::diag::{did_you_mean, Code, Diagnostic};
use crate::span::{FileId, Span};
use pest::error::InputLocation;
use pest::iterators::Pair;
use pest::Parser as _;
use pest_derive::Parser;
use std::cell::Cell;
use std::collections::BTreeSet;

#[derive(Parser)]
#[grammar = "../grammar/kiln.pest"]
struct KilnParser;

/// Brackets nest at most this deep; deeper input is refused before pest sees it, so no
/// input can exhaust the stack.
pub const MAX_NESTING: usize = 32;

/// Operators (binary and unary minus) in one statement at most; more are refused so that
/// the expression trees they build cannot exhaust the stack of later stages.
pub const MAX_OPERATORS: usize = 128;

/// Parses one file's text. `file` is the id its spans refer to.
pub fn parse_source(text: &str, file: FileId) -> Result<File, Diagnostic> {
    check_nesting(text, file)?;
    pest::set_error_detail(true);
    let mut pairs =
        KilnParser::parse(Rule::file, text).map_err(|e| syntax_error(text, file, &e))?;
    let b = Builder {
        file,
        ops: Cell::new(0),
    };
    let root = pairs.next().into_iter().flat_map(|p| p.into_inner());
    let mut items = Vec::new();
    for p in root {
        match p.as_rule() {
            Rule::model_decl => items.push(Item::Model(b.model(p)?)),
            Rule::block_decl => items.push(Item::Block(b.block(p)?)),
            Rule::train_decl => items.push(Item::Train(b.train(p)?)),
            Rule::use_decl => items.push(Item::Use(b.use_decl(p))),
            _ => {}
        }
    }
    Ok(File { items })
}

fn check_nesting(text: &str, file: FileId) -> Result<(), Diagnostic> {
    let mut depth = 0usize;
    let mut in_comment = false;
    let mut in_string = false;
    for (i, c) in text.char_indices() {
        match c {
            '\n' => {
                in_comment = false;
                in_string = false;
            }
            _ if in_comment => {}
            '"' => in_string = !in_string,
            _ if in_string => {}
            '#' => in_comment = true,
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Diagnostic::error(
                        Code::E0103,
                        format!("brackets nested more than {MAX_NESTING} deep"),
                        Span::new(file, i, i + 1),
                    )
                    .primary_label("this bracket is too deep")
                    .with_help("split the expression into several bindings"));
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn describe_rule(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::ident | Rule::stage => "a name",
        Rule::arg_name => "an argument name",
        Rule::number | Rule::integer => "a number",
        Rule::dim => "a dimension",
        Rule::string => "a string",
        Rule::expr | Rule::sum | Rule::product | Rule::unary | Rule::call | Rule::then_expr => {
            "an expression"
        }
        Rule::class_type | Rule::shape => "a shape like `[N, 4]`",
        Rule::setting | Rule::setting_args | Rule::setting_arg => "a train setting",
        Rule::input_stmt
        | Rule::target_stmt
        | Rule::layer_stmt
        | Rule::output_stmt
        | Rule::loss_stmt
        | Rule::regularize_stmt
        | Rule::return_stmt
        | Rule::allow_stmt
        | Rule::let_stmt => "a statement",
        Rule::model_decl | Rule::block_decl | Rule::train_decl | Rule::use_decl => {
            "`model`, `block`, `train` or `use`"
        }
        Rule::EOI => "end of file",
        Rule::kw_on => "`on`",
        Rule::kw_as => "`as`",
        Rule::kw_then => "`then`",
        Rule::kw_of => "`of`",
        Rule::pipe_op | Rule::add_op | Rule::mul_op => "an operator",
        _ => return None,
    })
}

fn describe_token(tok: &str) -> Option<String> {
    match tok {
        "\n" | "\r\n" | "\r" | ";" => Some("end of line".into()),
        "|>" | "+" | "-" | "*" | "/" | "@" => Some("an operator".into()),
        // Whitespace, comments and the first characters of names, numbers, strings and
        // bracketed expressions are covered by the rule descriptions.
        " " | "\t" | "#" | "_" | "\"" | "(" | "[" => None,
        t => Some(format!("`{t}`")),
    }
}

/// What the text at `pos` looks like, for "found ...".
fn describe_found(text: &str, pos: usize) -> String {
    let rest = &text[pos.min(text.len())..];
    let Some(c) = rest.chars().next() else {
        return "end of file".into();
    };
    if c == '\n' || c == '\r' {
        return "end of line".into();
    }
    if c.is_ascii_alphanumeric() || c == '_' {
        let word: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
            .take(40)
            .collect();
        return format!("`{word}`");
    }
    if rest.starts_with("|>") {
        return "`|>`".into();
    }
    if c == '"' {
        return "a string".into();
    }
    format!("`{}`", c.escape_debug())
}

/// Where to report a parse error. The expected tokens are those of the furthest position
/// any attempt reached; when the parser got there only by skipping line breaks, the
/// error belongs at the end of the line before them.
fn error_position(text: &str, located: usize, furthest: Option<usize>) -> usize {
    let located = located.min(text.len());
    let Some(max) = furthest.map(|m| m.min(text.len())).filter(|m| *m > located) else {
        return located;
    };
    let mut pos = max;
    let trimmed = text[..max].trim_end().len();
    if text[trimmed..max].contains('\n') {
        pos = trimmed.max(located);
    }
    if matches!(text[pos..].chars().next(), Some(' ' | '\t')) {
        return located;
    }
    pos
}

/// A string starting at `pos` that does not close on its line: its start and length.
fn unterminated_string(text: &str, pos: usize) -> Option<(usize, usize)> {
    let rest = &text[pos..];
    let line = rest.split('\n').next().unwrap_or("").trim_end_matches('\r');
    (line.starts_with('"') && !line[1..].contains('"')).then_some((pos, line.len()))
}

const KEYWORDS: &[&str] = &["model", "block", "train", "use"];

/// Whether `paren` is a group `(e)` rather than a tuple: one expression, and no comma
/// between it and the `)` (only blanks, line breaks and comments may be there).
fn is_group(paren: &Pair<Rule>) -> bool {
    let mut inner = paren.clone().into_inner();
    let (Some(only), None) = (inner.next(), inner.next()) else {
        return false;
    };
    let after = &paren.as_str()[only.as_span().end() - paren.as_span().start()..];
    let mut in_comment = false;
    for c in after.chars() {
        match (in_comment, c) {
            (true, '\n') => in_comment = false,
            (true, _) => {}
            (false, '#') => in_comment = true,
            (false, ',') => return false,
            (false, ')') => return true,
            _ => {}
        }
    }
    true
}

fn syntax_error(text: &str, file: FileId, e: &pest::error::Error<Rule>) -> Diagnostic {
    let located = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let pos = error_position(text, located, e.parse_attempts().map(|a| a.max_position));
    let mut expected: BTreeSet<String> = BTreeSet::new();
    if let Some(attempts) = e.parse_attempts() {
        for tok in attempts.expected_tokens() {
            // Literal tokens print as themselves; ranges and built-in rules are
            // covered by the rule names below.
            let token = tok.to_string();
            if token != "BUILTIN_RULE" && !(token.chars().count() == 4 && token.contains("..")) {
                expected.extend(describe_token(&token));
            }
        }
        for stack in attempts.call_stacks() {
            let rule = stack.deepest.get_rule().or(stack.parent.as_ref());
            if let Some(d) = rule.copied().and_then(describe_rule) {
                expected.insert(d.to_string());
            }
        }
    }
    if let pest::error::ErrorVariant::ParsingError { positives, .. } = &e.variant {
        expected.extend(
            positives
                .iter()
                .filter_map(|r| describe_rule(*r))
                .map(String::from),
        );
    }
    // Continuing an expression is always possible; name operators only where little
    // else fits, so the message lists what most likely was meant.
    let after_stage = expected.contains("`as`");
    let closers = expected
        .iter()
        .any(|s| matches!(s.as_str(), "`)`" | "`]`" | "`,`" | "`}`"));
    if expected.contains("an expression") {
        expected.remove("an operator");
    }
    if closers {
        expected.remove("an operator");
        expected.remove("`as`");
    }
    let found_eol = matches!(text[pos..].chars().next(), None | Some('\n' | '\r'));
    if found_eol {
        expected.remove("end of line");
    }
    let mut list: Vec<String> = expected.into_iter().collect();
    list.sort_by_key(|s| (s == "end of line", !s.starts_with('`'), s.clone()));
    let found = describe_found(text, pos);
    let rest = &text[pos..];
    let at_eol = found == "end of line" || found == "end of file";
    // At the end of a line, point just after the last token rather than at the newline.
    let span = if at_eol {
        Span::new(file, pos, pos)
    } else {
        let len = match found.strip_prefix('`').and_then(|f| f.strip_suffix('`')) {
            Some(tok) if !tok.is_empty() && rest.starts_with(tok) => tok.len(),
            _ => rest.chars().next().map_or(0, char::len_utf8),
        };
        Span::new(file, pos, pos + len)
    };
    if let Some((start, len)) = unterminated_string(text, located.min(text.len()))
        .or_else(|| unterminated_string(text, pos))
    {
        return Diagnostic::error(
            Code::E0101,
            "unterminated string",
            Span::new(file, start, start + len),
        )
        .primary_label("this string has no closing `\"` on its line");
    }
    let message = if list.is_empty() {
        format!("unexpected {found}")
    } else {
        format!("expected {}, found {found}", join_or(&list))
    };
    let label = if at_eol {
        format!("expected {} here", join_or(&list[..list.len().min(2)]))
    } else {
        format!("unexpected {found}")
    };
    let mut d = Diagnostic::error(Code::E0101, message, span).primary_label(label);
    let word = found.trim_matches('`');
    if list.iter().any(|s| s == "`model`") {
        if let Some(k) = did_you_mean(word, KEYWORDS.iter().copied()) {
            d = d.with_help(format!("did you mean `{k}`?"));
        }
    }
    if !at_eol && after_stage && ["`+`", "`-`", "`*`", "`/`", "`@`"].contains(&found.as_str()) {
        d = d.with_help("`|>` binds loosest, so a pipeline cannot be followed by an operator: wrap it in parentheses, `(x |> f) + y`");
    }
    if at_eol && list.iter().any(|s| s == "an expression") {
        d = d.with_help("a statement continues on the next line only after an operator, `|>`, `=` or an opening bracket, or when the next line begins with `|>` or an operator");
    }
    d
}

fn join_or(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [a] => a.clone(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

struct Builder {
    file: FileId,
    /// Operators seen in the current statement.
    ops: Cell<usize>,
}

type PResult<T> = Result<T, Diagnostic>;

impl Builder {
    /// The pair's span without the trailing whitespace pest may include.
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        let trimmed = p.as_str().trim_end().len();
        Span::new(self.file, s.start(), s.start() + trimmed)
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident {
            name: p.as_str().to_string(),
            span: self.span(&p),
        }
    }

    fn model(&self, p: Pair<Rule>) -> PResult<ModelDecl> {
        let span = self.span(&p);
        let mut it = p.into_inner().filter(|p| p.as_rule() != Rule::kw_model);
        let name = self.ident(it.next().expect("grammar: model name"));
        let body = self.body(it.next().expect("grammar: model body"))?;
        Ok(ModelDecl { name, body, span })
    }

    fn block(&self, p: Pair<Rule>) -> PResult<BlockDecl> {
        let span = self.span(&p);
        let mut name = None;
        let mut params = Vec::new();
        let mut body = Vec::new();
        for q in p.into_inner() {
            match q.as_rule() {
                Rule::ident => name = Some(self.ident(q)),
                Rule::block_param => {
                    let mut it = q.into_inner();
                    let name = self.ident(it.next().expect("grammar: param name"));
                    let ty = self.type_expr(it.next().expect("grammar: param type"))?;
                    params.push(BlockParam { name, ty });
                }
                Rule::body => body = self.body(q)?,
                _ => {}
            }
        }
        Ok(BlockDecl {
            name: name.expect("grammar: block name"),
            params,
            body,
            span,
        })
    }

    fn train(&self, p: Pair<Rule>) -> PResult<TrainDecl> {
        let span = self.span(&p);
        let mut model = None;
        let mut settings = Vec::new();
        for q in p.into_inner() {
            match q.as_rule() {
                Rule::ident => model = Some(self.ident(q)),
                Rule::setting => settings.push(self.setting(q)?),
                _ => {}
            }
        }
        Ok(TrainDecl {
            model: model.expect("grammar: train model"),
            settings,
            span,
        })
    }

    /// Counts an operator of the current statement against [`MAX_OPERATORS`].
    fn count_operator(&self, op: &Pair<Rule>) -> PResult<()> {
        self.ops.set(self.ops.get() + 1);
        if self.ops.get() > MAX_OPERATORS {
            return Err(Diagnostic::error(
                Code::E0103,
                format!("more than {MAX_OPERATORS} operators in one statement"),
                self.span(op),
            )
            .primary_label("statement too long")
            .with_help("split the expression into several bindings"));
        }
        Ok(())
    }

    fn setting(&self, p: Pair<Rule>) -> PResult<Setting> {
        self.ops.set(0);
        let span = self.span(&p);
        let mut it = p.into_inner();
        let key = self.ident(it.next().expect("grammar: setting key"));
        let mut args = Vec::new();
        if let Some(q) = it.next() {
            for a in q.into_inner() {
                args.push(match a.as_rule() {
                    Rule::setting_arg => {
                        let aspan = self.span(&a);
                        let mut name = None;
                        let mut value = None;
                        for x in a.into_inner() {
                            match x.as_rule() {
                                Rule::arg_name => name = Some(self.ident(x)),
                                Rule::dotted_name => {
                                    let span = self.span(&x);
                                    let name = x.as_str().to_string();
                                    value = Some(Expr {
                                        kind: ExprKind::Name(Ident { name, span }),
                                        span,
                                    });
                                }
                                _ => value = Some(self.then_expr(x)?),
                            }
                        }
                        Arg {
                            name,
                            value: value.expect("grammar: setting value"),
                            span: aspan,
                        }
                    }
                    _ => self.arg(a)?,
                });
            }
        }
        Ok(Setting { key, args, span })
    }

    fn then_expr(&self, p: Pair<Rule>) -> PResult<Expr> {
        let span = self.span(&p);
        let parts = p
            .into_inner()
            .filter(|q| q.as_rule() == Rule::expr)
            .map(|q| self.expr(q))
            .collect::<PResult<Vec<_>>>()?;
        Ok(if parts.len() == 1 {
            parts.into_iter().next().expect("one part")
        } else {
            Expr {
                kind: ExprKind::Then(parts),
                span,
            }
        })
    }

    fn use_decl(&self, p: Pair<Rule>) -> UseDecl {
        let span = self.span(&p);
        let path = p
            .into_inner()
            .find(|q| q.as_rule() == Rule::string)
            .and_then(|s| s.into_inner().next())
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        UseDecl { path, span }
    }

    fn body(&self, p: Pair<Rule>) -> PResult<Vec<Stmt>> {
        p.into_inner().map(|s| self.stmt(s)).collect()
    }

    fn stmt(&self, p: Pair<Rule>) -> PResult<Stmt> {
        self.ops.set(0);
        let span = self.span(&p);
        let rule = p.as_rule();
        let parts: Vec<Pair<Rule>> = p
            .into_inner()
            .filter(|q| {
                !matches!(
                    q.as_rule(),
                    Rule::kw_input
                        | Rule::kw_target
                        | Rule::kw_layer
                        | Rule::kw_output
                        | Rule::kw_loss
                        | Rule::kw_regularize
                        | Rule::kw_return
                        | Rule::kw_allow
                        | Rule::kw_on
                )
            })
            .collect();
        let annotated = parts.len() == 3;
        let mut parts = parts.into_iter();
        let mut take = || parts.next().expect("grammar: statement part");
        Ok(match rule {
            Rule::input_stmt | Rule::target_stmt => {
                let name = self.ident(take());
                let ty = self.type_expr(take())?;
                if rule == Rule::input_stmt {
                    Stmt::Input { name, ty, span }
                } else {
                    Stmt::Target { name, ty, span }
                }
            }
            Rule::layer_stmt => {
                let name = self.ident(take());
                let value = self.expr(take())?;
                Stmt::Layer { name, value, span }
            }
            Rule::output_stmt => {
                let name = self.ident(take());
                let value = parts.next().map(|q| self.expr(q)).transpose()?;
                Stmt::Output { name, value, span }
            }
            Rule::loss_stmt => Stmt::Loss {
                value: self.expr(take())?,
                span,
            },
            Rule::return_stmt => Stmt::Return {
                value: self.expr(take())?,
                span,
            },
            Rule::regularize_stmt => {
                let value = self.expr(take())?;
                let on = parts.map(|q| self.ident(q)).collect();
                Stmt::Regularize { value, on, span }
            }
            Rule::allow_stmt => Stmt::Allow {
                lints: parts.map(|q| self.ident(q)).collect(),
                span,
            },
            Rule::let_stmt => {
                let name = self.ident(take());
                let (annotation, value) = if annotated {
                    (Some(self.type_expr(take())?), self.expr(take())?)
                } else {
                    (None, self.expr(take())?)
                };
                Stmt::Let {
                    name,
                    annotation,
                    value,
                    span,
                }
            }
            r => unreachable!("grammar: unexpected statement rule {r:?}"),
        })
    }

    fn type_expr(&self, p: Pair<Rule>) -> PResult<TypeExpr> {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::shape => Ok(TypeExpr::Tensor(self.shape(p)?)),
            _ => {
                let mut it = p
                    .into_inner()
                    .filter(|q| !matches!(q.as_rule(), Rule::kw_class | Rule::kw_of));
                let shape = self.shape(it.next().expect("grammar: class shape"))?;
                let classes = self.dim(it.next().expect("grammar: class count"))?;
                Ok(TypeExpr::Class {
                    shape,
                    classes,
                    span,
                })
            }
        }
    }

    fn shape(&self, p: Pair<Rule>) -> PResult<ShapeExpr> {
        let span = self.span(&p);
        let dims = p
            .into_inner()
            .map(|d| self.dim(d))
            .collect::<PResult<_>>()?;
        Ok(ShapeExpr { dims, span })
    }

    fn dim(&self, p: Pair<Rule>) -> PResult<Dim> {
        let span = self.span(&p);
        let inner = p.into_inner().next().expect("grammar: dim");
        let kind = match inner.as_rule() {
            Rule::integer => DimKind::Size(inner.as_str().parse().map_err(|_| {
                Diagnostic::error(Code::E0102, "dimension is too large", span)
                    .primary_label("does not fit in 64 bits")
            })?),
            _ => DimKind::Sym(inner.as_str().to_string()),
        };
        Ok(Dim { kind, span })
    }

    fn expr(&self, p: Pair<Rule>) -> PResult<Expr> {
        // Each bracket level wraps its content in expr → sum → product → unary; walk
        // through the levels with one child without recursing, so nesting costs one
        // stack frame per bracket.
        let mut p = p;
        loop {
            let single = match p.as_rule() {
                Rule::paren if !is_group(&p) => None,
                Rule::expr | Rule::sum | Rule::product | Rule::unary | Rule::paren => {
                    let mut inner = p.clone().into_inner();
                    match (inner.next(), inner.next()) {
                        (Some(only), None) => Some(only),
                        _ => None,
                    }
                }
                _ => None,
            };
            match single {
                Some(only) => p = only,
                None => break,
            }
        }
        let span = self.span(&p);
        match p.as_rule() {
            Rule::expr => {
                let mut it = p.into_inner();
                let head = self.expr(it.next().expect("grammar: expr head"))?;
                let stages: Vec<Call> = it
                    .filter(|q| q.as_rule() == Rule::stage)
                    .map(|q| self.call(q))
                    .collect::<PResult<_>>()?;
                if stages.is_empty() {
                    Ok(head)
                } else {
                    Ok(Expr {
                        kind: ExprKind::Pipe {
                            head: Box::new(head),
                            stages,
                        },
                        span,
                    })
                }
            }
            Rule::sum | Rule::product => {
                let mut it = p.into_inner();
                let mut lhs = self.expr(it.next().expect("grammar: operand"))?;
                while let Some(op) = it.next() {
                    self.count_operator(&op)?;
                    let rhs = self.expr(it.next().expect("grammar: right operand"))?;
                    let op_span = self.span(&op);
                    let op = match op.as_str() {
                        "+" => BinOp::Add,
                        "-" => BinOp::Sub,
                        "*" => BinOp::Mul,
                        "/" => BinOp::Div,
                        _ => BinOp::MatMul,
                    };
                    let span = lhs.span.to(rhs.span);
                    lhs = Expr {
                        kind: ExprKind::Binary {
                            op,
                            op_span,
                            lhs: Box::new(lhs),
                            rhs: Box::new(rhs),
                        },
                        span,
                    };
                }
                Ok(lhs)
            }
            Rule::unary => {
                let parts: Vec<Pair<Rule>> = p.into_inner().collect();
                let (negs, prim) = parts.split_at(parts.len() - 1);
                for n in negs {
                    self.count_operator(n)?;
                }
                let mut e = self.expr(prim[0].clone())?;
                for n in negs.iter().rev() {
                    let s = self.span(n).to(e.span);
                    e = Expr {
                        kind: ExprKind::Neg(Box::new(e)),
                        span: s,
                    };
                }
                Ok(e)
            }
            Rule::number => {
                let text = p.as_str();
                let is_int = !text.contains(['.', 'e', 'E']);
                let value: f64 = text.parse().unwrap_or(f64::INFINITY);
                if !value.is_finite() || (is_int && text.parse::<u64>().is_err()) {
                    return Err(Diagnostic::error(
                        Code::E0102,
                        "number literal is too large",
                        span,
                    )
                    .primary_label("out of range"));
                }
                Ok(Expr {
                    kind: ExprKind::Number { value, is_int },
                    span,
                })
            }
            Rule::string => {
                let s = p
                    .into_inner()
                    .next()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default();
                Ok(Expr {
                    kind: ExprKind::Str(s),
                    span,
                })
            }
            Rule::ident => Ok(Expr {
                kind: ExprKind::Name(self.ident(p)),
                span,
            }),
            Rule::call => Ok(Expr {
                kind: ExprKind::Call(self.call(p)?),
                span,
            }),
            // (A paren with one expression and no comma, a group, was walked through
            // above.)
            Rule::paren | Rule::list => {
                let items = p
                    .clone()
                    .into_inner()
                    .map(|q| self.expr(q))
                    .collect::<PResult<_>>()?;
                Ok(Expr {
                    kind: if p.as_rule() == Rule::paren {
                        ExprKind::Tuple(items)
                    } else {
                        ExprKind::List(items)
                    },
                    span,
                })
            }
            r => unreachable!("grammar: unexpected expression rule {r:?}"),
        }
    }

    fn call(&self, p: Pair<Rule>) -> PResult<Call> {
        let span = self.span(&p);
        let mut callee = None;
        let mut args = None;
        let mut alias = None;
        for q in p.into_inner() {
            match q.as_rule() {
                Rule::ident => callee = Some(self.ident(q)),
                Rule::args => {
                    args = Some(
                        q.into_inner()
                            .map(|a| self.arg(a))
                            .collect::<PResult<_>>()?,
                    )
                }
                Rule::alias => {
                    alias = q
                        .into_inner()
                        .find(|x| x.as_rule() == Rule::ident)
                        .map(|x| self.ident(x))
                }
                _ => {}
            }
        }
        Ok(Call {
            callee: callee.expect("grammar: callee"),
            args,
            alias,
            span,
        })
    }

    fn arg(&self, p: Pair<Rule>) -> PResult<Arg> {
        let span = self.span(&p);
        let mut name = None;
        let mut value = None;
        for q in p.into_inner() {
            match q.as_rule() {
                Rule::arg_name => name = Some(self.ident(q)),
                _ => value = Some(self.expr(q)?),
            }
        }
        Ok(Arg {
            name,
            value: value.expect("grammar: argument value"),
            span,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of each `let` in `exprs` (one per line), parsed.
    fn values(exprs: &[&str]) -> Vec<ExprKind> {
        let body: String = exprs
            .iter()
            .enumerate()
            .map(|(i, e)| format!("  v{i} = {e}\n"))
            .collect();
        let file = parse_source(&format!("model m {{\n{body}}}\n"), 0).expect("parses");
        let Some(Item::Model(m)) = file.items.first() else {
            panic!("a model")
        };
        m.body
            .iter()
            .map(|s| match s {
                Stmt::Let { value, .. } => value.kind.clone(),
                other => panic!("not a let: {other:?}"),
            })
            .collect()
    }

    /// One rule parses parentheses; a comma (not one in a comment) makes a tuple.
    #[test]
    fn groups_and_tuples() {
        let got = values(&[
            "(x)",
            "(x,)",
            "()",
            "(x, y)",
            "((x))",
            "(x # a, b\n)",
            "(x\n,)",
        ]);
        let len = |k: &ExprKind| match k {
            ExprKind::Tuple(items) => Some(items.len()),
            _ => None,
        };
        let lens: Vec<Option<usize>> = got.iter().map(len).collect();
        assert_eq!(lens, [None, Some(1), Some(0), Some(2), None, None, Some(1)]);
        for k in [&got[0], &got[4], &got[5]] {
            assert!(matches!(k, ExprKind::Name(n) if n.name == "x"), "{k:?}");
        }
    }
}

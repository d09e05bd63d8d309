//! The ONNX graph under construction: nodes, initializers and constants with unique value
//! names, and the attribute and tensor constructors the rules use.

use super::proto::{attribute_proto::AttributeType, tensor_proto::DataType};
use super::proto::{AttributeProto, NodeProto, TensorProto};
use std::collections::{HashMap, HashSet};

/// Nodes and initializers in the order they are made.
pub struct Emit {
    /// The opset written.
    pub opset: u32,
    /// The graph's nodes, operands before users.
    pub nodes: Vec<NodeProto>,
    /// Parameters and constants.
    pub inits: Vec<TensorProto>,
    taken: HashSet<String>,
    scalars: HashMap<u32, String>,
}

impl Emit {
    /// An empty graph at `opset` in which `reserved` (the inputs' and outputs' names) are
    /// never given to another value.
    pub fn new(opset: u32, reserved: impl IntoIterator<Item = String>) -> Emit {
        Emit {
            opset,
            nodes: Vec::new(),
            inits: Vec::new(),
            taken: reserved.into_iter().collect(),
            scalars: HashMap::new(),
        }
    }

    /// A value name not used yet, from `hint`.
    pub fn fresh(&mut self, hint: &str) -> String {
        let base = if hint.is_empty() { "v" } else { hint };
        let mut name = base.to_string();
        let mut k = 1;
        while self.taken.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.taken.insert(name.clone());
        name
    }

    /// Marks `name` used (a parameter's name, taken as it is).
    pub fn claim(&mut self, name: &str) {
        self.taken.insert(name.to_string());
    }

    /// A node `op(inputs)` with one output named from `hint`.
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        hint: &str,
    ) -> String {
        self.node_n(op, inputs, 1, attrs, hint).remove(0)
    }

    /// A node with `outputs` outputs.
    pub fn node_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: usize,
        attrs: Vec<AttributeProto>,
        hint: &str,
    ) -> Vec<String> {
        let names: Vec<String> = (0..outputs).map(|_| self.fresh(hint)).collect();
        self.node_into(op, inputs, names.clone(), attrs);
        names
    }

    /// A node whose outputs have the given names.
    pub fn node_into(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: Vec<String>,
        attrs: Vec<AttributeProto>,
    ) {
        let name = format!("{op}_{}", self.nodes.len());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs,
            name: Some(name),
            op_type: Some(op.to_string()),
            attribute: attrs,
            ..NodeProto::default()
        });
    }

    /// An f32 initializer named `name` exactly (a parameter).
    pub fn param(&mut self, name: &str, dims: &[u64], values: &[f32]) {
        self.claim(name);
        self.inits.push(f32_tensor(name, dims, values));
    }

    /// An f32 constant named from `hint`.
    pub fn floats(&mut self, hint: &str, dims: &[u64], values: &[f32]) -> String {
        let name = self.fresh(hint);
        self.inits.push(f32_tensor(&name, dims, values));
        name
    }

    /// An int64 constant named from `hint` (shapes, axes, indices).
    pub fn ints(&mut self, hint: &str, dims: &[u64], values: &[i64]) -> String {
        let name = self.fresh(hint);
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.inits.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(DataType::Int64 as i32),
            name: Some(name.clone()),
            raw_data: Some(raw),
            ..TensorProto::default()
        });
        name
    }

    /// A 1-D int64 constant.
    pub fn int_list(&mut self, hint: &str, values: &[i64]) -> String {
        self.ints(hint, &[values.len() as u64], values)
    }

    /// An f32 scalar constant, one per value.
    pub fn scalar(&mut self, v: f32) -> String {
        if let Some(name) = self.scalars.get(&v.to_bits()) {
            return name.clone();
        }
        let name = self.floats("const", &[], &[v]);
        self.scalars.insert(v.to_bits(), name.clone());
        name
    }

    /// `Reshape(x, dims)`, where -1 or 0 in `dims` take ONNX's meaning.
    pub fn reshape(&mut self, x: &str, dims: &[i64], hint: &str) -> String {
        let shape = self.int_list("shape", dims);
        self.node("Reshape", &[x, &shape], vec![], hint)
    }

    /// `Transpose(x)` with `perm`.
    pub fn transpose(&mut self, x: &str, perm: &[i64], hint: &str) -> String {
        self.node("Transpose", &[x], vec![ints("perm", perm)], hint)
    }

    /// `Unsqueeze(x)` at `axes` (axes as an input, opset 13 on).
    pub fn unsqueeze(&mut self, x: &str, axes: &[i64], hint: &str) -> String {
        let a = self.int_list("axes", axes);
        self.node("Unsqueeze", &[x, &a], vec![], hint)
    }

    /// `Concat(parts)` along `axis`, or the part itself when there is one.
    pub fn concat(&mut self, parts: &[String], axis: i64, hint: &str) -> String {
        if let [one] = parts {
            return one.clone();
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        self.node("Concat", &refs, vec![int("axis", axis)], hint)
    }

    /// `x` split along axis 0 into `n` equal parts.
    pub fn split(&mut self, x: &str, n: usize, hint: &str) -> Vec<String> {
        if n == 1 {
            return vec![x.to_string()];
        }
        // From opset 18 on, an even split names its number of outputs.
        let attrs = if self.opset >= 18 {
            vec![int("axis", 0), int("num_outputs", n as i64)]
        } else {
            vec![int("axis", 0)]
        };
        self.node_n("Split", &[x], n, attrs, hint)
    }

    /// A reduction over `axes`: axes as an input for ReduceSum from opset 13 and for the
    /// others from opset 18; an attribute before.
    pub fn reduce(
        &mut self,
        op: &str,
        x: &str,
        axes: &[i64],
        keepdims: bool,
        hint: &str,
    ) -> String {
        let keep = int("keepdims", i64::from(keepdims));
        if op == "ReduceSum" || self.opset >= 18 {
            let a = self.int_list("axes", axes);
            self.node(op, &[x, &a], vec![keep], hint)
        } else {
            self.node(op, &[x], vec![keep, ints("axes", axes)], hint)
        }
    }
}

/// An f32 tensor in little-endian raw data.
fn f32_tensor(name: &str, dims: &[u64], values: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Float as i32),
        name: Some(name.to_string()),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..TensorProto::default()
    }
}

fn attr(name: &str, ty: AttributeType) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(ty as i32),
        ..AttributeProto::default()
    }
}

/// An int attribute.
pub fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        i: Some(v),
        ..attr(name, AttributeType::Int)
    }
}

/// An ints attribute.
pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        ints: v.to_vec(),
        ..attr(name, AttributeType::Ints)
    }
}

/// A float attribute.
pub fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        f: Some(v),
        ..attr(name, AttributeType::Float)
    }
}

/// A string attribute.
pub fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        s: Some(v.as_bytes().to_vec()),
        ..attr(name, AttributeType::String)
    }
}

/// A strings attribute.
pub fn strings(name: &str, v: &[&str]) -> AttributeProto {
    AttributeProto {
        strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..attr(name, AttributeType::Strings)
    }
}

/// Sizes as ONNX's int64s.
pub fn i64s(v: &[u64]) -> Vec<i64> {
    v.iter().map(|&d| d as i64).collect()
}

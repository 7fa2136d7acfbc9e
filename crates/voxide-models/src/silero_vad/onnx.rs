//! Just enough of the ONNX format to read a Silero VAD file's weights: the float
//! initializers of the main graph and the inputs of its `LSTM` node.
//!
//! An `.onnx` file is a protobuf `ModelProto`; the few messages and fields read here are
//! (onnx/onnx.proto): `ModelProto.graph` = 7; `GraphProto.node` = 1, `.initializer` = 5;
//! `NodeProto.input` = 1, `.op_type` = 4; `TensorProto.dims` = 1, `.data_type` = 2,
//! `.float_data` = 4, `.name` = 8, `.raw_data` = 9, `.data_location` = 14. Everything else is
//! skipped by wire type, so no protobuf dependency is needed for a 1 MB file read once.

use super::RawTensor;
use std::collections::HashMap;

/// `TensorProto.DataType.FLOAT`.
const FLOAT: u64 = 1;

/// What the loader needs from the graph.
pub(super) struct OnnxGraph {
    /// Float initializers by name (other element types are skipped).
    pub tensors: HashMap<String, RawTensor>,
    /// Inputs of each `LSTM` node: X, W, R, B, sequence_lens, initial_h, initial_c.
    pub lstm_inputs: Vec<Vec<String>>,
}

/// One protobuf field: its number and value (varints and fixed-size values as integers,
/// length-delimited ones as bytes).
enum Value<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

/// Iterates over the fields of one message.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated protobuf varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("protobuf varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or("truncated protobuf message")?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn next_field(&mut self) -> Result<Option<(u64, Value<'a>)>, String> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Int(self.varint()?),
            1 => Value::Int(u64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "protobuf length overflow")?;
                Value::Bytes(self.take(n)?)
            }
            5 => Value::Int(u64::from(u32::from_le_bytes(
                self.take(4)?.try_into().unwrap(),
            ))),
            w => return Err(format!("unsupported protobuf wire type {w}")),
        };
        Ok(Some((key >> 3, value)))
    }
}

fn utf8(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "protobuf string is not UTF-8".into())
}

/// Reads the main graph of an ONNX model (`bytes`: the whole file).
pub(super) fn read_graph(bytes: &[u8]) -> Result<OnnxGraph, String> {
    let mut graph = None;
    let mut model = Fields::new(bytes);
    while let Some((field, value)) = model.next_field()? {
        if let (7, Value::Bytes(b)) = (field, value) {
            graph = Some(b);
        }
    }
    let graph = graph.ok_or("not an ONNX model (no graph)")?;
    let mut out = OnnxGraph {
        tensors: HashMap::new(),
        lstm_inputs: Vec::new(),
    };
    let mut fields = Fields::new(graph);
    while let Some((field, value)) = fields.next_field()? {
        match (field, value) {
            (1, Value::Bytes(b)) => {
                let (op_type, inputs) = read_node(b)?;
                if op_type == "LSTM" {
                    out.lstm_inputs.push(inputs);
                }
            }
            (5, Value::Bytes(b)) => {
                if let Some((name, tensor)) = read_tensor(b)? {
                    out.tensors.insert(name, tensor);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `NodeProto` → (op_type, inputs).
fn read_node(buf: &[u8]) -> Result<(String, Vec<String>), String> {
    let (mut op_type, mut inputs) = (String::new(), Vec::new());
    let mut fields = Fields::new(buf);
    while let Some((field, value)) = fields.next_field()? {
        match (field, value) {
            (1, Value::Bytes(b)) => inputs.push(utf8(b)?),
            (4, Value::Bytes(b)) => op_type = utf8(b)?,
            _ => {}
        }
    }
    Ok((op_type, inputs))
}

/// `TensorProto` → (name, f32 tensor), or `None` for a tensor of another element type.
fn read_tensor(buf: &[u8]) -> Result<Option<(String, RawTensor)>, String> {
    let mut dims = Vec::new();
    let (mut data_type, mut name, mut external) = (0, String::new(), false);
    let (mut raw, mut float_data): (Option<&[u8]>, Vec<f32>) = (None, Vec::new());
    let mut fields = Fields::new(buf);
    while let Some((field, value)) = fields.next_field()? {
        match (field, value) {
            (1, Value::Int(d)) => dims.push(d),
            (1, Value::Bytes(packed)) => {
                let mut p = Fields::new(packed);
                while p.pos < packed.len() {
                    dims.push(p.varint()?);
                }
            }
            (2, Value::Int(t)) => data_type = t,
            (4, Value::Int(bits)) => float_data.push(f32::from_bits(bits as u32)),
            (4, Value::Bytes(packed)) => {
                if packed.len() % 4 != 0 {
                    return Err("packed float_data is not a whole number of floats".into());
                }
                float_data.extend(
                    packed
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap())),
                );
            }
            (8, Value::Bytes(b)) => name = utf8(b)?,
            (9, Value::Bytes(b)) => raw = Some(b),
            (14, Value::Int(1)) => external = true,
            _ => {}
        }
    }
    if data_type != FLOAT {
        return Ok(None);
    }
    if external {
        return Err(format!("tensor {name} is stored outside the .onnx file"));
    }
    let dims = dims
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| format!("tensor {name}: bad dimension {d}")))
        .collect::<Result<Vec<_>, _>>()?;
    let data = match raw {
        Some(raw) => {
            if raw.len() % 4 != 0 {
                return Err(format!(
                    "tensor {name}: raw_data is not a whole number of floats"
                ));
            }
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect()
        }
        None => float_data,
    };
    Ok(Some((name, RawTensor { dims, data })))
}

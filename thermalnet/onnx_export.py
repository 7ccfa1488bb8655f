"""Export a trained Thermalnet (deploy prototxt + caffemodel) to ONNX, checked against pycaffe.

    python -m thermalnet.onnx_export --deploy prototxt/thermalnet_v1_1_deploy.prototxt \
        --model snapshot.caffemodel --out thermalnet.onnx

Why: ONNX Runtime (CPU, or its GPU build) then runs the model with no Caffe at all,
which is what people augmenting large datasets on other machines want. The exporter
is written for exactly the layers the kit's deploy nets use -- Input, Convolution,
ReLU, Pooling (Caffe's ceil rounding), Concat, Dropout (identity at test time),
Deconvolution (with group), Crop, Softmax -- and reads each layer by its *type*
(layer names are free to change); any other type is a one-line error naming it.
Height and width stay symbolic in the graph (the Crop reads the input's shape), so
one .onnx file serves every image size, like the deploy prototxt.

After writing, the model is run by ONNX Runtime and by pycaffe on the same random
input and the largest difference of the probabilities is reported; above
VERIFY_TOLERANCE the export counts as failed and nothing is written.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np

from thermalnet import cli

OPSET = 13                      # ReduceSum with axes as an input, ReduceMax with the attribute
VERIFY_TOLERANCE = 1e-4
SUPPORTED = ("Input", "Convolution", "ReLU", "Pooling", "Concat", "Dropout", "Deconvolution", "Crop",
             "Softmax")


class ExportError(ValueError):
    """A net the exporter cannot translate exactly (one line, names the file and layer)."""


def _load_net_param(deploy: str):
    from google.protobuf import text_format

    from thermalnet.caffe_env import caffe_pb2
    pb2 = caffe_pb2()
    net = pb2.NetParameter()
    try:
        with open(deploy) as f:
            text_format.Merge(f.read(), net)
    except (OSError, text_format.ParseError) as exc:
        raise ExportError("%s: not a readable prototxt (%s)" % (deploy, str(exc).splitlines()[0]))
    if net.layers:
        raise ExportError("%s: V1 'layers' syntax; upgrade it with Caffe's upgrade_net_proto_text" % deploy)
    return pb2, net


def _pair(param, field: str, default: int) -> Tuple[int, int]:
    """Caffe's `field` (repeated or single) or its _h/_w form -> (h, w).

    The _h/_w fields count only when set (their proto defaults are not 0 in every Caffe)."""
    stem = "kernel" if field == "kernel_size" else field
    if param.HasField(stem + "_h") or param.HasField(stem + "_w"):
        return int(getattr(param, stem + "_h")), int(getattr(param, stem + "_w"))
    value = getattr(param, field)
    if isinstance(value, int):                       # PoolingParameter: optional scalars
        return (int(value), int(value)) if param.HasField(field) else (default, default)
    vals = list(value)
    if not vals:
        return default, default
    return int(vals[0]), int(vals[-1])


def _conv_attrs(cp, where: str) -> Dict:
    kh, kw = _pair(cp, "kernel_size", 0)
    if not kh or not kw:
        raise ExportError("%s: no kernel_size" % where)
    sh, sw = _pair(cp, "stride", 1)
    ph, pw = _pair(cp, "pad", 0)
    dil = list(cp.dilation) or [1]
    dh, dw = int(dil[0]), int(dil[-1])
    if cp.axis != 1:
        raise ExportError("%s: convolution axis %d (only 1 is exported)" % (where, cp.axis))
    return dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw], dilations=[dh, dw],
                group=int(cp.group))


def build_model(deploy: str, caffemodel: str):
    """Translate the deploy net + weights into an onnx.ModelProto (checked by onnx.checker)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from thermalnet.caffe_env import import_caffe
    pb2, net_param = _load_net_param(deploy)
    caffe = import_caffe()
    caffe.set_mode_cpu()
    try:
        net = caffe.Net(deploy, caffemodel, caffe.TEST)
    except Exception as exc:  # noqa: BLE001 -- pycaffe raises plain RuntimeError/Exception
        raise ExportError("%s: pycaffe cannot load it with %s (%s)" % (deploy, caffemodel, exc))
    params = {name: [p.data.copy() for p in blobs] for name, blobs in net.params.items()}

    nodes, inits, inputs = [], [], []
    current: Dict[str, str] = {}          # Caffe blob name -> ONNX tensor holding its latest value
    used = set()

    def fresh(name: str) -> str:
        out, k = name, 1
        while out in used:
            out, k = "%s_%d" % (name, k), k + 1
        used.add(out)
        return out

    def const(name: str, arr: np.ndarray) -> str:
        tname = fresh(name)
        inits.append(numpy_helper.from_array(arr, tname))
        return tname

    def src(blob: str, where: str) -> str:
        if blob not in current:
            raise ExportError("%s: bottom %r is produced by no earlier layer" % (where, blob))
        return current[blob]

    pool_method = pb2.PoolingParameter.PoolMethod
    for layer in net_param.layer:
        where = "%s: layer %r (%s)" % (deploy, layer.name, layer.type)
        if any(r.phase == pb2.TRAIN for r in layer.include):
            continue                            # not part of the TEST net
        t = layer.type
        if t not in SUPPORTED:
            raise ExportError("%s: type %s is not exported (supported: %s)" % (where, t, ", ".join(SUPPORTED)))
        if t == "Input":
            shape = list(layer.input_param.shape[0].dim) if layer.input_param.shape else [1, 3, 0, 0]
            for top in layer.top:
                name = fresh(top)
                dims = ["N", int(shape[1]), "H", "W"]
                inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
                current[top] = name
            continue
        bottoms = [src(b, where) for b in layer.bottom]
        tops = [fresh(tp) for tp in layer.top]
        if t in ("Convolution", "Deconvolution"):
            cp = layer.convolution_param
            attrs = _conv_attrs(cp, where)
            blobs = params.get(layer.name)
            if not blobs:
                raise ExportError("%s: no weights in %s" % (where, caffemodel))
            w = blobs[0].astype(np.float32)
            ins = [bottoms[0], const(layer.name + "_W", w)]
            if cp.bias_term and len(blobs) > 1:
                ins.append(const(layer.name + "_B", blobs[1].astype(np.float32).reshape(-1)))
            op = "Conv" if t == "Convolution" else "ConvTranspose"
            nodes.append(helper.make_node(op, ins, tops[:1], name=tops[0], **attrs))
        elif t == "ReLU":
            slope = float(layer.relu_param.negative_slope)
            if slope:
                nodes.append(helper.make_node("LeakyRelu", bottoms[:1], tops[:1], alpha=slope, name=tops[0]))
            else:
                nodes.append(helper.make_node("Relu", bottoms[:1], tops[:1], name=tops[0]))
        elif t == "Pooling":
            pp = layer.pooling_param
            if pp.global_pooling:
                op = "GlobalMaxPool" if pp.pool == pool_method.Value("MAX") else "GlobalAveragePool"
                nodes.append(helper.make_node(op, bottoms[:1], tops[:1], name=tops[0]))
            else:
                kh, kw = _pair(pp, "kernel_size", 0)
                sh, sw = _pair(pp, "stride", 1)
                ph, pw = _pair(pp, "pad", 0)
                if pp.pool == pool_method.Value("MAX"):
                    op = "MaxPool"
                elif pp.pool == pool_method.Value("AVE") and not (ph or pw):
                    op = "AveragePool"          # with padding Caffe's divisor differs from ONNX's
                else:
                    raise ExportError("%s: only MAX pooling, or AVE without padding, is exported" % where)
                # Caffe rounds the output size up (ceil_mode); with pad < kernel its last
                # window always starts inside the input, as ONNX's ceil_mode assumes.
                nodes.append(helper.make_node(op, bottoms[:1], tops[:1], kernel_shape=[kh, kw], strides=[sh, sw],
                                              pads=[ph, pw, ph, pw], ceil_mode=1, name=tops[0]))
        elif t == "Concat":
            axis = int(layer.concat_param.axis) if layer.concat_param.HasField("axis") else \
                int(layer.concat_param.concat_dim) if layer.concat_param.HasField("concat_dim") else 1
            nodes.append(helper.make_node("Concat", bottoms, tops[:1], axis=axis, name=tops[0]))
        elif t == "Dropout":
            nodes.append(helper.make_node("Identity", bottoms[:1], tops[:1], name=tops[0]))  # TEST phase
        elif t == "Crop":
            axis = int(layer.crop_param.axis) % 4
            offs = list(layer.crop_param.offset) or [0]
            offsets = [int(offs[i - axis] if len(offs) > 1 else offs[0]) for i in range(axis, 4)]
            # ends = offsets + shape(reference)[axis:]: the input size stays symbolic.
            shape = fresh(tops[0] + "_refshape")
            nodes.append(helper.make_node("Shape", [bottoms[1]], [shape], name=shape))
            size = fresh(tops[0] + "_size")
            nodes.append(helper.make_node("Slice", [shape, const(tops[0] + "_a0", np.array([axis], np.int64)),
                                                    const(tops[0] + "_a1", np.array([4], np.int64))],
                                          [size], name=size))
            starts = const(tops[0] + "_starts", np.array(offsets, np.int64))
            ends = fresh(tops[0] + "_ends")
            nodes.append(helper.make_node("Add", [starts, size], [ends], name=ends))
            axes = const(tops[0] + "_axes", np.arange(axis, 4, dtype=np.int64))
            nodes.append(helper.make_node("Slice", [bottoms[0], starts, ends, axes], tops[:1], name=tops[0]))
        elif t == "Softmax":
            axis = int(layer.softmax_param.axis) if layer.softmax_param.HasField("axis") else 1
            # As max / subtract / exp / sum / divide over the axis rather than the Softmax op:
            # ONNX Runtime's Softmax over the channel axis of NCHW was measured at about 2/3 of
            # the whole net's time (it is written for the last axis); these element-wise
            # ops run at memory speed. Same arithmetic as Caffe's SoftmaxLayer.
            peak, shifted, ex, total = (fresh(tops[0] + suffix) for suffix in ("_max", "_shift", "_exp", "_sum"))
            nodes.append(helper.make_node("ReduceMax", bottoms[:1], [peak], axes=[axis], keepdims=1, name=peak))
            nodes.append(helper.make_node("Sub", [bottoms[0], peak], [shifted], name=shifted))
            nodes.append(helper.make_node("Exp", [shifted], [ex], name=ex))
            nodes.append(helper.make_node("ReduceSum", [ex, const(tops[0] + "_axis", np.array([axis], np.int64))],
                                          [total], keepdims=1, name=total))
            nodes.append(helper.make_node("Div", [ex, total], tops[:1], name=tops[0]))
        for top, name in zip(layer.top, tops):
            current[top] = name
    if not inputs:
        raise ExportError("%s: no Input layer (the deploy net must start with Input `data`)" % deploy)
    from thermalnet.inference import OUTPUT_BLOB
    if OUTPUT_BLOB not in current:
        raise ExportError("%s: no blob %r (the deploy net must end in Softmax `prob`)" % (deploy, OUTPUT_BLOB))
    # The graph's output is called `prob` whatever tensor last wrote that blob.
    last = current[OUTPUT_BLOB]
    if last != OUTPUT_BLOB:
        nodes.append(helper.make_node("Identity", [last], [OUTPUT_BLOB], name="prob_out"))
    q = int(net.blobs[OUTPUT_BLOB].data.shape[1])
    outputs = [helper.make_tensor_value_info(OUTPUT_BLOB, TensorProto.FLOAT, ["N", q, "H", "W"])]
    graph = helper.make_graph(nodes, net_param.name or "thermalnet", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="thermalnet-kit thermalnet.onnx_export",
                              doc_string="from %s + %s" % (os.path.basename(deploy), os.path.basename(caffemodel)))
    model.ir_version = min(model.ir_version, 8)    # readable by ONNX Runtime releases from 1.10 on
    onnx.checker.check_model(model)
    return model


def session_options(threads: Optional[int] = None):
    """ONNX Runtime options for the kit: all graph optimisations, worker threads that sleep.

    Why no spinning: ONNX Runtime's idle workers spin by default, which on a machine
    shared with other work (a cluster node, the kit's 2-core CI) was measured to cut
    throughput: v1_0 at 240x320, batch 4, load ~7: 12.7 img/s spinning, 18.1 not.
    """
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = int(threads)
    return opts


def ort_session(model, threads: Optional[int] = None):
    """An ONNX Runtime CPU session for a model (path, bytes or ModelProto)."""
    import onnxruntime as ort
    if not isinstance(model, (str, bytes)):
        model = model.SerializeToString()
    return ort.InferenceSession(model, session_options(threads), providers=["CPUExecutionProvider"])


def verify(deploy: str, caffemodel: str, model, sizes: List[Tuple[int, int]], batch: int = 1,
           seed: int = 0) -> float:
    """max |ONNX Runtime - pycaffe| of `prob` on random mean-subtracted-like inputs at each size."""
    from thermalnet.inference import OUTPUT_BLOB, _PycaffeBackend
    ref = _PycaffeBackend(deploy, caffemodel, None)
    sess = ort_session(model)
    name = sess.get_inputs()[0].name
    rng = np.random.RandomState(seed)
    worst = 0.0
    for h, w in sizes:
        x = rng.uniform(-128, 128, size=(batch, 3, h, w)).astype(np.float32)
        a = ref.forward(x)
        b = sess.run([OUTPUT_BLOB], {name: x})[0]
        if a.shape != b.shape:
            raise ExportError("%s: ONNX output %s differs in shape from pycaffe's %s at %dx%d"
                              % (deploy, b.shape, a.shape, h, w))
        worst = max(worst, float(np.abs(a - b).max()))
    return worst


def deploy_size(deploy: str) -> Tuple[int, int]:
    """(H, W) of the deploy net's Input layer."""
    _, net = _load_net_param(deploy)
    for layer in net.layer:
        if layer.type == "Input" and layer.input_param.shape:
            dims = list(layer.input_param.shape[0].dim)
            return int(dims[2]), int(dims[3])
    raise ExportError("%s: no Input layer with a shape" % deploy)


def export(deploy: str, caffemodel: str, out: str, verify_sizes: Optional[List[Tuple[int, int]]] = None,
           log=print) -> float:
    """Write `out` (atomically) after verifying it against pycaffe; returns the max |diff|."""
    for path, what in ((deploy, "deploy prototxt"), (caffemodel, "caffemodel")):
        if not os.path.isfile(path):
            raise ExportError("%s: no such %s" % (path, what))
    from thermalnet.inference import check_model
    check_model(deploy, caffemodel)           # a bad file is a one-line error, not Caffe's abort
    model = build_model(deploy, caffemodel)
    if verify_sizes is None:
        h, w = deploy_size(deploy)
        verify_sizes = [(h, w), (h + 16, w - 16)]       # the deploy size and another: H, W stay symbolic
    diff = verify(deploy, caffemodel, model, verify_sizes)
    log("[onnx_export] %s: %d nodes; max |ONNX Runtime - pycaffe| of prob = %.2e at %s"
        % (out, len(model.graph.node), diff, ", ".join("%dx%d" % s for s in verify_sizes)))
    if not diff < VERIFY_TOLERANCE:
        raise ExportError("%s: ONNX Runtime and pycaffe differ by %.2e (> %.0e); nothing written"
                          % (deploy, diff, VERIFY_TOLERANCE))
    from thermalnet.atomic import write_bytes
    write_bytes(out, model.SerializeToString())
    return diff


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m thermalnet.onnx_export", description=__doc__.split("\n\n")[0])
    p.add_argument("--deploy", required=True, help="deploy prototxt (Input data -> Softmax prob)")
    p.add_argument("--model", required=True, help="trained weights (.caffemodel)")
    p.add_argument("--out", required=True, help="output .onnx file")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        export(args.deploy, args.model, args.out)
    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())

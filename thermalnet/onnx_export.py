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

A Deconvolution that is one fixed separable filter per channel -- Caffe's bilinear
filler, as in the kit's upscore layers, checked on the caffemodel's weights -- is a
linear map along each image axis: out = Uh . X . Uw^T. Consecutive ones and the Crop
after them fold into one small matrix per axis, built in the graph from the runtime
sizes, so the whole upsampling is two MatMuls on the 1/16 score map (~80 MFLOP an image
at 240x320) instead of two full-resolution grouped ConvTransposes and a copy; the
channel Softmax after it subtracts the max at the score map's resolution (see
softmax_of_recipe). Learned (non-separable) deconvolutions keep the plain ConvTranspose
translation.

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


UNDERFLOW_SUM = 1e-30          # below this sum of exps the shifted softmax falls back to the exact one
SEPARABLE_RTOL = 2.0 ** -20     # |W - outer(a_h, a_w)| allowed, relative to max |W|: float32 rounding only


def separable_kernel(weights: np.ndarray, num_output: int, group: int, bias: Optional[np.ndarray] = None
                     ) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(a_h, a_w) when a Deconvolution is one fixed separable filter per channel, else None.

    That is: num_output == group == input channels, no bias (or a zero one), the same
    kh x kw kernel in every group, and that kernel equal to outer(a_h, a_w) up to
    float32 rounding (Caffe's bilinear filler is exactly so). Such a layer is a linear
    map along each image axis, which build_model applies as two small matrix products
    instead of a full-resolution grouped transposed convolution. A learned kernel is
    not separable and keeps the ConvTranspose translation.
    """
    w = np.asarray(weights)
    if w.ndim != 4 or w.shape[:2] != (group, 1) or num_output != group:
        return None
    if bias is not None and np.any(bias):
        return None
    k = w[0, 0]
    if not all(np.array_equal(k, w[c, 0]) for c in range(1, w.shape[0])):
        return None
    k = k.astype(np.float64)
    p, q = np.unravel_index(int(np.argmax(np.abs(k))), k.shape)
    peak = k[p, q]
    if peak == 0 or not np.all(np.isfinite(k)):
        return None
    scale = np.sqrt(abs(peak))                    # balanced: a_h[p] == |a_w[q]|
    a_h = (k[:, q] / scale).astype(np.float32)
    a_w = (k[p, :] / scale * np.sign(peak)).astype(np.float32)
    rebuilt = np.outer(a_h.astype(np.float64), a_w.astype(np.float64))
    if np.abs(rebuilt - k).max() > SEPARABLE_RTOL * abs(peak):
        return None
    return a_h, a_w


class _Translator:
    """One deploy net + its weights -> ONNX nodes, layer by layer (build_model runs it).

    Keeps the graph being built (nodes, initializers, inputs), which ONNX tensor holds
    each Caffe blob's latest value, and the blobs still held as a recipe: fixed
    separable deconvolutions (see separable_kernel) and a Crop right after them are not
    translated one by one; the blob stays the low-resolution map plus the steps until
    something reads it. Then, per image axis, the steps become one small matrix U
    (out x in) built in the graph from the runtime sizes (H, W stay symbolic), and the
    chain is two MatMuls: Uh . X . Uw^T, about 80 MFLOP an image at 240x320 instead of
    the full-resolution transposed convolutions and the copy of the crop.
    """

    def __init__(self, deploy: str, caffemodel: str):
        from onnx import TensorProto, helper, numpy_helper

        from thermalnet.caffe_env import import_caffe
        self.helper, self.numpy_helper, self.TensorProto = helper, numpy_helper, TensorProto
        self.deploy, self.caffemodel = deploy, caffemodel
        self.pb2, self.net_param = _load_net_param(deploy)
        caffe = import_caffe()
        caffe.set_mode_cpu()
        try:
            self.net = caffe.Net(deploy, caffemodel, caffe.TEST)
        except Exception as exc:  # noqa: BLE001 -- pycaffe raises plain RuntimeError/Exception
            raise ExportError("%s: pycaffe cannot load it with %s (%s)" % (deploy, caffemodel, exc))
        self.params = {name: [p.data.copy() for p in blobs] for name, blobs in self.net.params.items()}
        self.nodes, self.inits, self.inputs = [], [], []
        self.current: Dict[str, str] = {}    # Caffe blob name -> ONNX tensor holding its latest value
        self.pending: Dict[str, Tuple[str, List]] = {}   # blob -> (low-resolution tensor, steps)
        self.used = set()

    # -- graph primitives ------------------------------------------------------------------

    def fresh(self, name: str) -> str:
        out, k = name, 1
        while out in self.used:
            out, k = "%s_%d" % (name, k), k + 1
        self.used.add(out)
        return out

    def const(self, name: str, arr: np.ndarray) -> str:
        tname = self.fresh(name)
        self.inits.append(self.numpy_helper.from_array(arr, tname))
        return tname

    def emit(self, kind: str, ins: List[str], name: str, **attrs) -> str:
        out = self.fresh(name)
        self.nodes.append(self.helper.make_node(kind, ins, [out], name=out, **attrs))
        return out

    def node(self, kind: str, ins: List[str], outs: List[str], **attrs) -> None:
        """A node writing the given tensors, named after the first."""
        self.nodes.append(self.helper.make_node(kind, ins, outs, name=outs[0], **attrs))

    def i64(self, name: str, value) -> str:
        return self.const(name, np.array(value, np.int64))

    # -- recipes: fixed separable deconvolutions and the crop after them ---------------------

    def axis_matrix(self, x: str, axis: int, steps: List, stem: str, transposed: bool) -> Optional[str]:
        """Graph of the steps' (out x in) matrix along `axis` (2: H, 3: W), or its transpose."""
        emit, i64 = self.emit, self.i64
        size = emit("Gather", [emit("Shape", [x], stem + "_shape"), i64(stem + "_axis", axis)], stem + "_n", axis=0)
        mat = None
        for kind, per_axis, ref in steps:
            if per_axis.get(axis) is None:
                continue
            if kind == "deconv":
                # Caffe's deconvolution: out[i] = sum_j in[j] * a[i + pad - j*stride], a kernel
                # index outside 0..K-1 reading 0 (K: the dilated kernel's length); out size
                # stride*(n-1) + K - 2*pad. Consecutive ones compose: U2 . U1.
                a, stride, pad, dil = per_axis[axis]
                k = dil * (len(a) - 1) + 1
                table = np.zeros(k + 1, np.float32)      # indices -1 and K (after the Clip) read the trailing 0
                table[:k:dil] = a
                span = emit("Mul", [size, i64(stem + "_s", stride)], stem + "_span")
                out = emit("Add", [span, i64(stem + "_k", k - 2 * pad - stride)], stem + "_m")
                rows = emit("Range", [i64(stem + "_p", pad), emit("Add", [out, i64(stem + "_p2", pad)], stem + "_end"),
                                      i64(stem + "_one", 1)], stem + "_rows")            # i + pad
                cols = emit("Range", [i64(stem + "_zero", 0), span, i64(stem + "_stride", stride)], stem + "_cols")
                rows = emit("Unsqueeze", [rows, i64(stem + "_ra", [0 if transposed else 1])], stem + "_r2")
                cols = emit("Unsqueeze", [cols, i64(stem + "_ca", [1 if transposed else 0])], stem + "_c2")
                idx = emit("Clip", [emit("Sub", [rows, cols], stem + "_idx"), i64(stem + "_lo", -1),
                                    i64(stem + "_hi", k)], stem + "_clip")
                step = emit("Gather", [self.const(stem + "_a", table), idx], stem + "_U", axis=0)
                if mat is not None:
                    step = emit("MatMul", [mat, step] if transposed else [step, mat], stem + "_UU")
                mat, size = step, out
            else:                                        # crop: rows offset .. offset + the reference's size
                n = emit("Gather", [emit("Shape", [ref], stem + "_rshape"), i64(stem + "_raxis", axis)],
                         stem + "_rn", axis=0)
                start = i64(stem + "_o", [per_axis[axis]])
                end = emit("Add", [start, emit("Unsqueeze", [n, i64(stem + "_oa", [0])], stem + "_rn1")], stem + "_oe")
                mat = emit("Slice", [mat, start, end, i64(stem + "_sa", [1 if transposed else 0])], stem + "_crop")
                size = n
        return mat

    def apply(self, x: str, steps: List, blob: str) -> str:
        """X . Uw^T first (the cheaper order when h < w: about 80 against 100 MFLOP at 240x320), then Uh . that."""
        uh = self.axis_matrix(x, 2, steps, blob + "_Uh", False)
        uwt = self.axis_matrix(x, 3, steps, blob + "_UwT", True)
        y = x
        if uwt is not None:
            y = self.emit("MatMul", [y, uwt], blob + "_w" if uh is not None else blob)
        if uh is not None:
            y = self.emit("MatMul", [uh, y], blob)
        return y

    def softmax_of_recipe(self, blob: str, top: str) -> None:
        """Caffe's channel Softmax of a recipe whose matrices are >= 0 (bilinear), shifted at low resolution.

        Why: softmax is the same for any per-pixel shift, and the max over channels at
        full resolution (ReduceMax, then Sub) was measured as the slowest part of the
        softmax. Subtracting each score-map pixel's channel max *before* the upsampling
        costs nothing and keeps every logit <= 0 (nonnegative U), so exp cannot
        overflow: out = Exp(Y') / ReduceSum(Exp(Y')). It could underflow only where
        neighbouring pixels disagree by ~70 in logit; if any pixel's sum is below 1e-30
        an If runs the exact max-subtracted softmax instead (the numbers then equal
        Caffe's as in the plain translation).
        """
        helper, emit = self.helper, self.emit
        x, steps = self.pending[blob]               # the blob itself stays a recipe for any other reader
        peak = emit("ReduceMax", [x], blob + "_lowmax", axes=[1], keepdims=1)
        y = self.apply(emit("Sub", [x, peak], blob + "_lowshift"), steps, blob + "_shifted")
        ex = emit("Exp", [y], top + "_exp")
        axis = self.i64(top + "_axis", [1])
        total = emit("ReduceSum", [ex, axis], top + "_sum", keepdims=1)
        low = emit("Less", [emit("ReduceMin", [total], top + "_minsum", keepdims=0),
                            self.const(top + "_tiny", np.array(UNDERFLOW_SUM, np.float32))], top + "_underflow")

        def branch(body: List, out: str):
            return helper.make_graph(body, out, [], [helper.make_tensor_value_info(out, self.TensorProto.FLOAT, None)])
        t = top + "_exact"
        exact = [helper.make_node("ReduceMax", [y], [t + "_max"], axes=[1], keepdims=1, name=t + "_max"),
                 helper.make_node("Sub", [y, t + "_max"], [t + "_shift"], name=t + "_shift"),
                 helper.make_node("Exp", [t + "_shift"], [t + "_exp"], name=t + "_exp"),
                 helper.make_node("ReduceSum", [t + "_exp", axis], [t + "_sum"], keepdims=1, name=t + "_sum"),
                 helper.make_node("Div", [t + "_exp", t + "_sum"], [t], name=t)]
        fast = [helper.make_node("Div", [ex, total], [top + "_fast"], name=top + "_fast")]
        self.nodes.append(helper.make_node("If", [low], [top], name=top, then_branch=branch(exact, t),
                                           else_branch=branch(fast, top + "_fast")))

    def src(self, blob: str, where: str) -> str:
        """The tensor holding `blob` (a recipe is turned into one first)."""
        if blob in self.pending:
            self.current[blob] = self.apply(*self.pending.pop(blob), blob)
        if blob not in self.current:
            raise ExportError("%s: bottom %r is produced by no earlier layer" % (where, blob))
        return self.current[blob]

    def deferred(self, layer, where: str) -> bool:
        """Keep a fixed separable Deconvolution, a Crop of a recipe, or a Softmax of a recipe
        as recipe steps; False for every other layer (translated as it stands)."""
        t, pending = layer.type, self.pending
        if t == "Deconvolution" and len(layer.bottom) == 1 and len(layer.top) == 1 and self.params.get(layer.name):
            cp = layer.convolution_param
            attrs = _conv_attrs(cp, where)
            blobs = self.params[layer.name]
            ab = separable_kernel(blobs[0], int(cp.num_output), attrs["group"],
                                  blobs[1] if cp.bias_term and len(blobs) > 1 else None)
            if ab is None:
                return False
            b = layer.bottom[0]
            x, steps = pending[b] if b in pending else (self.src(b, where), [])
            per_axis = {2 + i: (ab[i], attrs["strides"][i], attrs["pads"][i], attrs["dilations"][i])
                        for i in (0, 1)}
            pending[layer.top[0]] = (x, steps + [("deconv", per_axis, None)])
            self.current.pop(layer.top[0], None)
            return True
        if t == "Crop" and len(layer.bottom) == 2 and layer.bottom[0] in pending \
                and int(layer.crop_param.axis) % 4 >= 2:
            axis = int(layer.crop_param.axis) % 4
            offs = list(layer.crop_param.offset) or [0]
            per_axis = {i: int(offs[i - axis] if len(offs) > 1 else offs[0]) for i in range(axis, 4)}
            x, steps = pending[layer.bottom[0]]
            pending[layer.top[0]] = (x, steps + [("crop", per_axis, self.src(layer.bottom[1], where))])
            self.current.pop(layer.top[0], None)
            return True
        if t == "Softmax" and len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] in pending \
                and (int(layer.softmax_param.axis) if layer.softmax_param.HasField("axis") else 1) % 4 == 1 \
                and all(np.all(v[0] >= 0) for kind, per_axis, _ in pending[layer.bottom[0]][1] if kind == "deconv"
                        for v in per_axis.values()):
            top = self.fresh(layer.top[0])
            self.softmax_of_recipe(layer.bottom[0], top)
            self.current[layer.top[0]] = top
            pending.pop(layer.top[0], None)
            return True
        return False

    # -- one method per layer type: (layer, bottom tensors, top tensors, where) -------------

    def input(self, layer) -> None:
        shape = list(layer.input_param.shape[0].dim) if layer.input_param.shape else [1, 3, 0, 0]
        for top in layer.top:
            name = self.fresh(top)
            dims = ["N", int(shape[1]), "H", "W"]
            self.inputs.append(self.helper.make_tensor_value_info(name, self.TensorProto.FLOAT, dims))
            self.current[top] = name

    def convolution(self, layer, bottoms: List[str], tops: List[str], where: str) -> None:
        cp = layer.convolution_param
        attrs = _conv_attrs(cp, where)
        blobs = self.params.get(layer.name)
        if not blobs:
            raise ExportError("%s: no weights in %s" % (where, self.caffemodel))
        ins = [bottoms[0], self.const(layer.name + "_W", blobs[0].astype(np.float32))]
        if cp.bias_term and len(blobs) > 1:
            ins.append(self.const(layer.name + "_B", blobs[1].astype(np.float32).reshape(-1)))
        self.node("Conv" if layer.type == "Convolution" else "ConvTranspose", ins, tops[:1], **attrs)

    deconvolution = convolution

    def relu(self, layer, bottoms: List[str], tops: List[str], where: str) -> None:
        slope = float(layer.relu_param.negative_slope)
        if slope:
            self.node("LeakyRelu", bottoms[:1], tops[:1], alpha=slope)
        else:
            self.node("Relu", bottoms[:1], tops[:1])

    def pooling(self, layer, bottoms: List[str], tops: List[str], where: str) -> None:
        pp = layer.pooling_param
        pool_method = self.pb2.PoolingParameter.PoolMethod
        if pp.global_pooling:
            self.node("GlobalMaxPool" if pp.pool == pool_method.Value("MAX") else "GlobalAveragePool",
                      bottoms[:1], tops[:1])
            return
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
        self.node(op, bottoms[:1], tops[:1], kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw],
                  ceil_mode=1)

    def concat(self, layer, bottoms: List[str], tops: List[str], where: str) -> None:
        axis = int(layer.concat_param.axis) if layer.concat_param.HasField("axis") else \
            int(layer.concat_param.concat_dim) if layer.concat_param.HasField("concat_dim") else 1
        self.node("Concat", bottoms, tops[:1], axis=axis)

    def dropout(self, layer, bottoms: List[str], tops: List[str], where: str) -> None:
        self.node("Identity", bottoms[:1], tops[:1])       # TEST phase

    def crop(self, layer, bottoms: List[str], tops: List[str], where: str) -> None:
        axis = int(layer.crop_param.axis) % 4
        offs = list(layer.crop_param.offset) or [0]
        offsets = [int(offs[i - axis] if len(offs) > 1 else offs[0]) for i in range(axis, 4)]
        # ends = offsets + shape(reference)[axis:]: the input size stays symbolic.
        shape = self.fresh(tops[0] + "_refshape")
        self.node("Shape", [bottoms[1]], [shape])
        size = self.fresh(tops[0] + "_size")
        self.node("Slice", [shape, self.const(tops[0] + "_a0", np.array([axis], np.int64)),
                            self.const(tops[0] + "_a1", np.array([4], np.int64))], [size])
        starts = self.const(tops[0] + "_starts", np.array(offsets, np.int64))
        ends = self.fresh(tops[0] + "_ends")
        self.node("Add", [starts, size], [ends])
        axes = self.const(tops[0] + "_axes", np.arange(axis, 4, dtype=np.int64))
        self.node("Slice", [bottoms[0], starts, ends, axes], tops[:1])

    def softmax(self, layer, bottoms: List[str], tops: List[str], where: str) -> None:
        axis = int(layer.softmax_param.axis) if layer.softmax_param.HasField("axis") else 1
        # As max / subtract / exp / sum / divide over the axis rather than the Softmax op:
        # ONNX Runtime's Softmax over the channel axis of NCHW was measured at about 2/3 of
        # the whole net's time (it is written for the last axis); these element-wise
        # ops run at memory speed. Same arithmetic as Caffe's SoftmaxLayer.
        peak, shifted, ex, total = (self.fresh(tops[0] + suffix) for suffix in ("_max", "_shift", "_exp", "_sum"))
        self.node("ReduceMax", bottoms[:1], [peak], axes=[axis], keepdims=1)
        self.node("Sub", [bottoms[0], peak], [shifted])
        self.node("Exp", [shifted], [ex])
        self.node("ReduceSum", [ex, self.const(tops[0] + "_axis", np.array([axis], np.int64))], [total], keepdims=1)
        self.node("Div", [ex, total], tops[:1])

    # -- the whole net -----------------------------------------------------------------------

    def build(self):
        import onnx
        helper, pb2 = self.helper, self.pb2
        for layer in self.net_param.layer:
            where = "%s: layer %r (%s)" % (self.deploy, layer.name, layer.type)
            if any(r.phase == pb2.TRAIN for r in layer.include):
                continue                            # not part of the TEST net
            if layer.type not in SUPPORTED:
                raise ExportError("%s: type %s is not exported (supported: %s)"
                                  % (where, layer.type, ", ".join(SUPPORTED)))
            if layer.type == "Input":
                self.input(layer)
                continue
            if self.deferred(layer, where):
                continue
            bottoms = [self.src(b, where) for b in layer.bottom]
            tops = [self.fresh(tp) for tp in layer.top]
            getattr(self, layer.type.lower())(layer, bottoms, tops, where)
            for top, name in zip(layer.top, tops):
                self.current[top] = name
                self.pending.pop(top, None)
        if not self.inputs:
            raise ExportError("%s: no Input layer (the deploy net must start with Input `data`)" % self.deploy)
        from thermalnet.inference import OUTPUT_BLOB
        if OUTPUT_BLOB not in self.current and OUTPUT_BLOB not in self.pending:
            raise ExportError("%s: no blob %r (the deploy net must end in Softmax `prob`)" % (self.deploy, OUTPUT_BLOB))
        # The graph's output is called `prob` whatever tensor last wrote that blob.
        last = self.src(OUTPUT_BLOB, self.deploy)
        if last != OUTPUT_BLOB:
            self.nodes.append(helper.make_node("Identity", [last], [OUTPUT_BLOB], name="prob_out"))
        q = int(self.net.blobs[OUTPUT_BLOB].data.shape[1])
        outputs = [helper.make_tensor_value_info(OUTPUT_BLOB, self.TensorProto.FLOAT, ["N", q, "H", "W"])]
        graph = helper.make_graph(self.nodes, self.net_param.name or "thermalnet", self.inputs, outputs,
                                  initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="thermalnet-kit thermalnet.onnx_export",
                                  doc_string="from %s + %s" % (os.path.basename(self.deploy),
                                                               os.path.basename(self.caffemodel)))
        model.ir_version = min(model.ir_version, 8)    # readable by ONNX Runtime releases from 1.10 on
        onnx.checker.check_model(model)
        return model


def build_model(deploy: str, caffemodel: str):
    """Translate the deploy net + weights into an onnx.ModelProto (checked by onnx.checker)."""
    return _Translator(deploy, caffemodel).build()


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

"""One Predictor for every consumer: augment, evaluate, the DIGITS client, the benchmark.

The network must see exactly what it saw in training, so preprocessing copies the
Caffe Data layer that DIGITS configures: the LMDB Datums are BGR uint8 CxHxW and the
layer's transform_param only subtracts mean.binaryproto (no scale, no crop). When an
image is not the mean's size (augmenting another dataset), the mean image is resized
to HxW with cv2.resize (bilinear) -- for DIGITS-style mean images that are nearly
flat this is the closest equivalent of "the mean at this pixel".

Three back-ends run the same network (Input `data` -> ... -> Softmax `prob`, shape
(N, Q, H, W)): pycaffe, the reference; OpenCV's DNN module, which reads the deploy
prototxt + caffemodel with no Caffe at deployment time; and ONNX Runtime on the
model exported by thermalnet.onnx_export (an .onnx file needs neither Caffe nor the
prototxt; given a caffemodel, it is exported in memory first, with pycaffe). Images of any size work: the input is reshaped per batch,
and images are grouped by size so a batch is always one size.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from thermalnet import decoders
from thermalnet.atomic import atomic_file
from thermalnet.caffe_env import use_device

BACKENDS = ("pycaffe", "opencv", "onnxruntime")
ONNX_SUFFIX = ".onnx"
DECODINGS = decoders.DECODINGS
OUTPUT_BLOB = "prob"
INPUT_BLOB = "data"


def _require_file(path: str, what: str) -> str:
    if not path or not os.path.isfile(path):
        raise FileNotFoundError("%s: no such %s" % (path, what))
    return path


def check_model(deploy: str, caffemodel: str) -> None:
    """The deploy must parse and the caffemodel must hold every weight layer of it, at its shapes.

    Checked before Caffe sees them: Caffe aborts the whole process on a prototxt that does
    not parse or a blob of another shape, and silently keeps random fillers for the layers a
    file lacks (an empty file "loads" and predicts noise). Errors are one line naming the file.
    """
    from thermalnet import nets
    nets.load_net(deploy)
    fit = nets.check_weights(caffemodel, deploy)
    missing = fit["from_fillers"]
    if missing:
        raise nets.WeightsError("%s: holds no weights for layer%s %s of %s; not a trained model of this network"
                                % (caffemodel, "s" if len(missing) > 1 else "", ", ".join(missing[:4])
                                   + (", ..." if len(missing) > 4 else ""), deploy))


def check_bins(deploy: str, num_bins: int, dataset: str) -> None:
    """A dataset's Q must be the deploy net's: another Q decodes to wrong temperatures, or fails
    later with a message that names neither file. A net without the kit's score layer is let
    through (its output shape is checked at the first forward)."""
    from thermalnet import nets
    try:
        q = nets.num_classes(deploy)
    except ValueError:
        nets.load_net(deploy)                 # a prototxt that does not parse is still an error
        return
    if q != int(num_bins):
        raise ValueError("%s: dataset has %d thermal bins but %s scores %d; use the dataset the model was "
                         "trained on" % (dataset, int(num_bins), deploy, q))


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Accept HxWx3 RGB, HxWx4 RGBA (alpha dropped) or HxW grey; return HxWx3 uint8."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError("expected an HxWx3 RGB image, got shape %s" % (img.shape,))
    img = img[:, :, :3]
    if img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating):
            img = np.clip(np.rint(img), 0, 255)
        img = img.astype(np.uint8)
    return img


def load_mean(mean) -> Optional[np.ndarray]:
    """mean.binaryproto path, a CxHxW array, a per-channel (B, G, R) triple, or None."""
    if mean is None:
        return None
    if isinstance(mean, (str, os.PathLike)):
        from thermalnet.lmdb_io import read_mean_binaryproto
        path = _require_file(os.fspath(mean), "mean file (mean.binaryproto)")
        try:
            arr = read_mean_binaryproto(path)
        except Exception as exc:  # protobuf DecodeError, reshape errors
            raise ValueError("%s: not a readable mean.binaryproto (%s)" % (path, exc)) from exc
    else:
        arr = np.asarray(mean, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape((-1, 1, 1))
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError("the mean must be 3xHxW (BGR) or 3 values, got shape %s" % (arr.shape,))
    return arr.astype(np.float32)


class _MeanCache:
    """The mean image at each input size (resized once per size)."""

    def __init__(self, mean: Optional[np.ndarray]):
        self.mean = mean
        self.cache: Dict[Tuple[int, int], np.ndarray] = {}

    def at(self, height: int, width: int) -> Optional[np.ndarray]:
        if self.mean is None:
            return None
        if self.mean.shape[1:] in ((1, 1), (height, width)):
            return self.mean
        key = (height, width)
        if key not in self.cache:
            import cv2
            hwc = np.ascontiguousarray(self.mean.transpose(1, 2, 0))
            resized = cv2.resize(hwc, (width, height), interpolation=cv2.INTER_LINEAR)
            self.cache[key] = np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32)
        return self.cache[key]




class _PycaffeBackend:
    def __init__(self, deploy: str, weights: str, gpu: Optional[int]):
        caffe = use_device(gpu)
        # The (prototxt, weights, phase) form exists in every pycaffe from 1.0-rc3 on.
        self.net = caffe.Net(deploy, weights, caffe.TEST)
        inputs = list(self.net.inputs)
        self.input = inputs[0] if inputs else INPUT_BLOB
        if OUTPUT_BLOB not in self.net.blobs:
            raise ValueError("%s: the deploy net has no output blob %r" % (deploy, OUTPUT_BLOB))

    def forward(self, blob: np.ndarray) -> np.ndarray:
        data = self.net.blobs[self.input]
        if tuple(data.data.shape) != blob.shape:
            data.reshape(*blob.shape)
            self.net.reshape()
        data.data[...] = blob
        self.net.forward()
        return np.array(self.net.blobs[OUTPUT_BLOB].data, dtype=np.float32, copy=True)


class _OpenCVBackend:
    def __init__(self, deploy: str, weights: str, gpu: Optional[int]):
        import cv2
        self.cv2 = cv2
        try:
            self.net = cv2.dnn.readNetFromCaffe(deploy, weights)
        except cv2.error as exc:
            raise ValueError("%s: OpenCV DNN cannot read this net with %s (%s)"
                             % (deploy, weights, str(exc).strip().splitlines()[-1])) from exc
        if gpu is not None:
            # Only OpenCV builds with CUDA honour this; others warn and stay on the CPU.
            self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_CUDA)
            self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CUDA)
        else:
            self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

        # OpenCV's Softmax over the channel axis was measured at 40% of the whole net's
        # time (v1_0, 240x320): the net is run up to the layer that feeds the final
        # Softmax (layers found by type, in the prototxt's order) and softmax_channels
        # finishes in numpy, several times faster, same values to float rounding.
        names = list(self.net.getLayerNames())
        self.scores_layer = None
        if names and self.net.getLayer(self.net.getLayerId(names[-1])).type == "Softmax" \
                and tuple(self.net.getUnconnectedOutLayersNames()) == (names[-1],) and len(names) > 1:
            self.scores_layer = names[-2]

    def forward(self, blob: np.ndarray) -> np.ndarray:
        # The prototxt's Input layer fixes one shape, and OpenCV refuses to redefine it
        # (setInputShape raises "Input shape redefinition is not allowed"). setInput with
        # a blob of another shape is what works: the net re-plans its buffers on the next
        # forward. Grouping images by size keeps that to once per size change.
        self.net.setInput(np.ascontiguousarray(blob, dtype=np.float32), INPUT_BLOB)
        if self.scores_layer is None:
            return np.array(self.net.forward(OUTPUT_BLOB), dtype=np.float32, copy=True)
        return softmax_channels(np.array(self.net.forward(self.scores_layer), dtype=np.float32, copy=True))


def softmax_channels(scores: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of an (N, C, H, W) float32 array, in place (stable: max subtracted)."""
    peak = scores.max(axis=1, keepdims=True)
    np.subtract(scores, peak, out=scores)
    np.exp(scores, out=scores)
    np.sum(scores, axis=1, keepdims=True, out=peak)
    np.divide(scores, peak, out=scores)
    return scores


class _OnnxRuntimeBackend:
    def __init__(self, deploy: Optional[str], weights: str, gpu: Optional[int]):
        import onnxruntime as ort

        from thermalnet import onnx_export
        if weights.lower().endswith(ONNX_SUFFIX):
            model = weights
        else:
            if deploy is None:
                raise ValueError("%s: a caffemodel needs its deploy prototxt (or pass an exported .onnx)" % weights)
            model = onnx_export.build_model(deploy, weights).SerializeToString()
        providers = ["CPUExecutionProvider"]
        if gpu is not None:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("this onnxruntime has no CUDA provider (install onnxruntime-gpu); "
                                   "drop --gpu to run on the CPU")
            providers = [("CUDAExecutionProvider", {"device_id": int(gpu)})] + providers
        from thermalnet.onnx_export import session_options
        try:
            self.session = ort.InferenceSession(model, session_options(), providers=providers)
        except Exception as exc:  # noqa: BLE001 -- onnxruntime raises its own error classes
            where = weights if isinstance(model, str) else deploy
            raise ValueError("%s: ONNX Runtime cannot load it (%s)" % (where, str(exc).strip().splitlines()[-1]))
        self.input = self.session.get_inputs()[0].name
        if OUTPUT_BLOB not in [o.name for o in self.session.get_outputs()]:
            raise ValueError("%s: the model has no output %r" % (weights, OUTPUT_BLOB))

    def forward(self, blob: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_BLOB], {self.input: np.ascontiguousarray(blob, dtype=np.float32)})[0]


class Predictor:
    """Visible RGB images -> per-pixel thermal-bin probabilities or brightness.

    deploy_prototxt: a deploy net with Input `data` and Softmax output `prob` (N, Q, H, W)
                     (may be None for backend "onnxruntime" with an .onnx model)
    caffemodel: trained weights (a DIGITS snapshot_iter_N.caffemodel), or for
                "onnxruntime" also a model written by thermalnet.onnx_export
    mean_file: the training dataset's mean.binaryproto (or an array; None = no mean)
    backend: "pycaffe" (reference), "opencv" (cv2.dnn) or "onnxruntime"; gpu: device id or None (CPU)
    """

    def __init__(self, deploy_prototxt: Optional[str], caffemodel: str, mean_file=None, backend: str = "pycaffe",
                 batch_size: int = 8, gpu: Optional[int] = None):
        if backend not in BACKENDS:
            raise ValueError("unknown backend %r (choose from %s)" % (backend, ", ".join(BACKENDS)))
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1, got %d" % batch_size)
        self.weights = _require_file(os.fspath(caffemodel), "caffemodel")
        onnx_model = backend == "onnxruntime" and self.weights.lower().endswith(ONNX_SUFFIX)
        if onnx_model and deploy_prototxt is None:
            self.deploy = self.weights          # named in shape errors
        elif deploy_prototxt is None:
            raise ValueError("%s: backend %s needs the deploy prototxt (only onnxruntime with an %s model "
                             "runs without it)" % (self.weights, backend, ONNX_SUFFIX))
        else:
            self.deploy = _require_file(os.fspath(deploy_prototxt), "deploy prototxt")
        self.backend_name = backend
        self.batch_size = int(batch_size)
        self.means = _MeanCache(load_mean(mean_file))
        if not onnx_model:
            check_model(self.deploy, self.weights)
        impl = {"pycaffe": _PycaffeBackend, "opencv": _OpenCVBackend, "onnxruntime": _OnnxRuntimeBackend}[backend]
        self.backend = impl(None if onnx_model else self.deploy, self.weights, gpu) if impl is _OnnxRuntimeBackend \
            else impl(self.deploy, self.weights, gpu)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """RGB HxWx3 uint8 -> BGR float32 3xHxW minus the mean: what the Data layer feeds."""
        rgb = as_rgb_uint8(image)
        chw = rgb[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
        mean = self.means.at(chw.shape[1], chw.shape[2])
        if mean is not None:
            chw -= mean
        return chw

    def forward_blob(self, blob: np.ndarray) -> np.ndarray:
        """One preprocessed (N, 3, H, W) batch -> probabilities (N, Q, H, W)."""
        out = self.backend.forward(blob)
        if out.ndim != 4 or out.shape[0] != blob.shape[0] or out.shape[2:] != blob.shape[2:]:
            raise ValueError("%s: output %r has shape %s for input %s; expected (N, Q, H, W) at the input size"
                             % (self.deploy, OUTPUT_BLOB, out.shape, blob.shape))
        return out

    def predict_probs(self, images: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Per-image (Q, H, W) float32 probabilities, in input order."""
        groups: "OrderedDict[Tuple[int, int], List[int]]" = OrderedDict()
        pre = []
        for i, img in enumerate(images):
            chw = self.preprocess(img)
            pre.append(chw)
            groups.setdefault(chw.shape[1:], []).append(i)
        results: List[Optional[np.ndarray]] = [None] * len(pre)
        for idx in groups.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                out = self.forward_blob(np.stack([pre[i] for i in chunk]))
                for j, i in enumerate(chunk):
                    results[i] = out[j]
        return results  # type: ignore[return-value]

    def predict_brightness(self, images: Sequence[np.ndarray], decoding: str = "expectation",
                           temperature: Optional[float] = None,
                           class_weights: Optional[np.ndarray] = None, rng=None) -> List[np.ndarray]:
        """Per-image HxW brightness 0..255 (float), decoded with decoders.decode
        ("mmse" needs the training class weights, layout.read_class_weights; "sample" draws
        from `rng`, one numpy Generator for a whole evaluation)."""
        if decoding not in DECODINGS:
            raise ValueError("unknown decoding %r (choose from %s)" % (decoding, ", ".join(DECODINGS)))
        return [decoders.decode(p, decoding, temperature, class_weights, rng) for p in self.predict_probs(images)]


def random_caffemodel(deploy_prototxt: str, out_path: str, seed: int = 0, logit_std: float = 4.0) -> str:
    """Save random weights for a net (tests and the benchmark only; never a trained model).

    Parameters the prototxt gives a filler for (xavier, bilinear upsampling) keep
    Caffe's draw; parameters it leaves at zero get He-normal weights. Then the last
    convolution before the Softmax is scaled so the logits have std `logit_std` on a
    random mean-subtracted input, like a trained net's: near-uniform probabilities
    would make back-end comparisons trivially pass, saturated ones meaningless.
    """
    from thermalnet.caffe_env import import_caffe
    caffe = import_caffe()
    caffe.set_mode_cpu()
    if hasattr(caffe, "set_random_seed"):
        caffe.set_random_seed(int(seed))
    net = caffe.Net(_require_file(deploy_prototxt, "prototxt"), caffe.TEST)
    rng = np.random.RandomState(seed)
    for name, params in net.params.items():
        w = params[0].data
        if not w.any():
            fan_in = max(1, int(np.prod(w.shape[1:])))
            w[...] = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=w.shape)
    names = list(net._layer_names)
    soft = [i for i, layer in enumerate(net.layers) if layer.type == "Softmax"]
    if soft and logit_std:
        logits = net.bottom_names[names[soft[-1]]][0]
        inp = list(net.inputs)[0] if list(net.inputs) else INPUT_BLOB
        data = net.blobs[inp].data
        data[...] = rng.uniform(-128, 128, size=data.shape)
        net.forward()
        std = float(net.blobs[logits].data.std())
        convs = [n for i, n in enumerate(names[:soft[-1]]) if net.layers[i].type == "Convolution"]
        if std > 0 and convs:
            # ReLU, deconvolution and crop after it are positively homogeneous: logits scale exactly.
            for p in net.params[convs[-1]]:
                p.data[...] *= logit_std / std
    with atomic_file(out_path) as tmp:
        net.save(tmp)
    return out_path

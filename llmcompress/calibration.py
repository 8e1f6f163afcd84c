"""One calibration engine for every calibrated method (GPTQ, Wanda, SparseGPT).

Layer-sequential calibration, as in GPTQ's reference code: the inputs of the first
decoder layer are captured once (embedding only, the layers never run), then each
decoder layer in turn is moved to the work device, observed and modified by the method,
and run on the stored hidden states to produce the next layer's inputs, so that every
layer is calibrated on inputs that already carry the error of the layers before it.
Only one decoder layer sits on the accelerator at a time; the others stay where they
were loaded (CPU), so a model far larger than the GPU can be calibrated.

Inside a layer, ``LayerRunner.observe(modules)`` runs the stored samples through the
layer only as far as needed: it stops each forward as soon as every observed module has
seen its input. Observing q/k/v stops after the input norm; observing down_proj needs the
whole layer but no extra pass for the output. Submodules whose outputs can no longer change
are replayed (``LayerRunner.freeze``): the first norm from the start, attention and the
norms after it once o_proj is final; and attention's / the MLP's outputs are computed from
o_proj's / down_proj's kept inputs in one matmul instead of re-running q/k/v and the
attention product, or gate/up. Each replay gives the bits a recomputation gives (tested).

With ``reference=True`` the engine also carries the *unmodified* model's hidden states: each
layer gets a full-precision copy (in the calibration dtype) that runs on them, and
``observe`` hands every module its reference input beside the input that carries the
earlier layers' changes (GPTAQ's asymmetric calibration needs both). This doubles the
stored hidden states and the forwards.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .modeling import decoder_layer_prefix, decoder_layers
from .models import DTYPES

logger = logging.getLogger(__name__)


# Values of the ``calibration_dtype`` option of every calibrated method.
CALIBRATION_DTYPES = ("fast", "bfloat16", "float32", "float16", "auto")
CALIBRATION_DTYPE_HELP = ("dtype of the calibration forwards (statistics accumulate in float32): fast (bfloat16 where "
                          "the device computes it natively: CUDA, CPUs with AVX512 / AMX; float32 elsewhere) | "
                          "bfloat16 | float32 | float16 | auto (the model's)")


def native_bf16(device) -> bool:
    """Whether ``device`` has bf16 kernels (CUDA with bf16 support; CPUs where oneDNN reports bf16).

    On a CPU with AMX bf16 calibration forwards were ~6x faster than float32. An AVX2-only CPU
    emulates bf16: a Qwen2.5-0.5B MLP matmul took 1.84 s in bf16 against 0.30 s in float32 on a
    2-core AMD EPYC (torch 2.13, one probe). On a 2-core AMD EPYC with AVX512-BF16 (no AMX) the same
    matmul took 0.20 s in bf16 against 0.53 s in float32 (one probe). AVX512 CPUs without
    AVX512-BF16, which oneDNN also reports, were not measured.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def resolve_calibration_dtype(name: str, device) -> torch.dtype | None:
    """The dtype of calibration forwards for option value ``name`` on ``device`` (None: the model's)."""
    if name == "auto":
        return None
    if name == "fast":
        return fast_dtype(device, "calibration forwards", "calibration_dtype")
    return DTYPES[name]


def fast_dtype(device, what: str = "calibration forwards", option: str = "calibration_dtype") -> torch.dtype:
    """The ``fast`` choice on ``device``: bfloat16 where it is native, else float32 (logged, naming
    ``what`` runs in it and the ``option`` that pins bf16)."""
    if native_bf16(device):
        return torch.bfloat16
    logger.info("%s in float32: %s has no native bf16 (set %s: bfloat16 to force it)", what,
                torch.device(device), option)
    return torch.float32


class _Stop(Exception):
    """Raised inside a forward to skip the rest of it."""


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _to(obj, device, dtype=None):
    """Move tensors in nested containers; floating tensors also cast to ``dtype`` if given."""
    if isinstance(obj, torch.Tensor):
        if dtype is not None and obj.is_floating_point():
            return obj.to(device, dtype)
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device, dtype) for k, v in obj.items()}
    return obj


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, input_ids: torch.Tensor, device: torch.device, batch_size: int = 8):
    """Hidden states entering decoder layer 0 (``[N, T, H]`` on ``device``) and its keyword arguments.

    The embedding and rotary modules are moved to ``device`` for the capture and back afterwards.
    """
    layers = decoder_layers(model)
    inner = model.model
    others = [m for n, m in inner.named_children() if m is not layers]
    homes = [next(iter(m.parameters()), torch.empty(0)).device for m in others]
    for m in others:
        m.to(device)
    store: dict = {"hidden": [], "kwargs": None}

    def grab(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        store["hidden"].append(hidden)
        if store["kwargs"] is None:
            kw = {k: v for k, v in kwargs.items() if k not in ("hidden_states",)}
            kw["use_cache"] = False
            kw.pop("cache", None)
            kw.pop("past_key_values", None)
            kw.pop("past_key_value", None)
            store["kwargs"] = kw
        raise _Stop

    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for i in range(0, len(input_ids), batch_size):
            with contextlib.suppress(_Stop):
                model(input_ids[i : i + batch_size].to(device), use_cache=False)
    finally:
        handle.remove()
        for m, home in zip(others, homes):
            m.to(home)
    return torch.cat(store["hidden"]), store["kwargs"]


class LayerRunner:
    """Runs stored samples through one decoder layer, in mini-batches.

    ``reference``: optional ``(layer copy, hidden states)`` of the unmodified model, run
    beside the layer by :meth:`observe` and :meth:`propagate`.
    """

    def __init__(self, layer: nn.Module, hidden: torch.Tensor, kwargs: dict, batch_size: int,
                 reference: tuple[nn.Module, torch.Tensor] | None = None):
        self.layer, self.hidden, self.kwargs, self.batch_size = layer, hidden, kwargs, batch_size
        self.ref_layer, self.ref_hidden = reference if reference is not None else (None, None)
        self._batch = 0
        self._frozen: dict[nn.Module, dict[int, object]] = {}
        # (stream's layer, Linear name) -> batch -> that Linear's input, kept by observe(keep=...)
        self._kept: dict[tuple[int, str], dict[int, torch.Tensor]] = {}

    def _layers(self):
        return [self.layer] if self.ref_layer is None else [self.layer, self.ref_layer]

    def _batches(self):
        for b, i in enumerate(range(0, len(self.hidden), self.batch_size)):
            self._batch = b
            yield i

    def freeze(self, name: str, through: str | None = None, keep_outputs: bool = True) -> None:
        """Replay submodule ``name``'s outputs from now on: computed once per batch, then reused.

        For a submodule whose weights are final (attention, once q/k/v/o are quantized), so
        that later passes over this layer skip it. Its inputs must not change before
        :meth:`release`, which the engine calls after propagating the layer. The reference
        layer's copy of the submodule is frozen too (its weights never change).

        ``through``: a Linear whose output is the submodule's output (its first element, the
        others None) and whose final inputs :meth:`observe` kept: each batch's output is then
        that one matmul on the kept input instead of the whole submodule (attention without
        q/k/v and the attention product; the MLP without gate/up). The first batch is checked
        against the real forward, bit for bit; on any difference every batch is recomputed.

        ``keep_outputs=False``: only the pass that propagates the layer comes next (the last
        group), so outputs are not stored for reuse.
        """
        for layer in self._layers():
            kept = self._kept.pop((id(layer), through), None) if through else None
            self._freeze(layer.get_submodule(name), kept, layer.get_submodule(through) if kept else None, keep_outputs)

    def _freeze(self, module: nn.Module, kept: dict[int, torch.Tensor] | None, linear: nn.Module | None,
                keep_outputs: bool = True) -> None:
        if module in self._frozen:
            return
        cache: dict[int, object] = {}
        self._frozen[module] = cache
        original = module.forward
        check: dict[str, object] = {}  # "ok": verdict on the shortcut, "form": the real output's shape

        def replay(*args, **kwargs):
            b = self._batch
            if b in cache:
                return cache[b]
            x = kept.pop(b, None) if kept is not None else None
            if x is None or check.get("ok") is False:
                cache[b] = original(*args, **kwargs)
            elif "ok" not in check:
                cache[b] = original(*args, **kwargs)
                check["ok"], check["form"] = _same_as_linear(cache[b], linear(x))
            else:
                cache[b] = _shaped(check["form"], linear(x))
            return cache[b] if keep_outputs else cache.pop(b)

        module.forward = replay

    def release(self) -> None:
        for module in self._frozen:
            del module.forward  # drop the instance attribute: the class method is back
        self._frozen.clear()
        self._kept.clear()

    def _run_until(self, layer: nn.Module, hidden: torch.Tensor, modules: dict[str, nn.Module], i: int,
                   fn: Callable[[str, torch.Tensor], None], keep) -> None:
        """One batch through ``layer``, calling ``fn(name, input)``, stopped once every module has fired."""
        fired: set[str] = set()

        def make_hook(name):
            def hook(module, args):
                fn(name, args[0])
                if name in keep:
                    self._kept.setdefault((id(layer), name), {})[self._batch] = args[0]
                fired.add(name)
                if len(fired) == len(modules):
                    raise _Stop

            return hook

        handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in modules.items()]
        try:
            with contextlib.suppress(_Stop):
                layer(hidden[i : i + self.batch_size], **self.kwargs)
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def observe(self, modules: dict[str, nn.Module], fn: Callable[..., None], keep: tuple[str, ...] = ()) -> None:
        """Call ``fn(name, input)`` for every module and batch; stop each forward once all have fired.

        With a reference, ``fn(name, input, reference_input)``: the same module's input in the
        unmodified layer fed the unmodified model's hidden states (same batch).

        ``keep``: names among ``modules`` whose inputs are final (nothing before them changes any
        more) and are kept for :meth:`freeze`'s ``through`` (memory: those inputs, every batch;
        kept only while that is at most :data:`KEEP_FRACTION` of the free memory where they live).
        """
        keep = self._affordable(modules, keep)
        if self.ref_layer is None:
            for i in self._batches():
                self._run_until(self.layer, self.hidden, modules, i, fn, keep)
            return
        ref_modules = {n: self.ref_layer.get_submodule(n) for n in modules}
        for i in self._batches():
            refs: dict[str, torch.Tensor] = {}
            self._run_until(self.ref_layer, self.ref_hidden, ref_modules, i, refs.__setitem__, keep)
            self._run_until(self.layer, self.hidden, modules, i, lambda n, x: fn(n, x, refs[n]), keep)

    def _affordable(self, modules: dict[str, nn.Module], keep: tuple[str, ...]) -> tuple[str, ...]:
        """The names in ``keep`` whose inputs (all batches, both streams) fit, together and in order,
        in KEEP_FRACTION of the free memory: one budget for all of them, not one each, since a
        decoder layer has up to seven Linear layers."""
        x = self.hidden
        budget = KEEP_FRACTION * _free_bytes(x.device)
        kept = []
        for name in keep:
            per_token = getattr(modules[name], "in_features", x.shape[-1]) * x.element_size()
            need = x.shape[0] * x.shape[1] * per_token * len(self._layers())
            if need <= budget:
                kept.append(name)
                budget -= need
        return tuple(kept)

    @torch.no_grad()
    def propagate(self) -> None:
        """Replace the stored hidden states by this layer's outputs (in place, batch by batch)."""
        for i in self._batches():
            self.hidden[i : i + self.batch_size] = _first(self.layer(self.hidden[i : i + self.batch_size], **self.kwargs))
            if self.ref_layer is not None:
                self.ref_hidden[i : i + self.batch_size] = _first(
                    self.ref_layer(self.ref_hidden[i : i + self.batch_size], **self.kwargs))


# Kept Linear inputs (observe's ``keep``) may take at most this share of the free memory of their
# device: they save recomputation, and are not worth an out-of-memory error on a large model.
KEEP_FRACTION = 0.25


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil  # an accelerate dependency

    return psutil.virtual_memory().available


def _same_as_linear(real, out: torch.Tensor) -> tuple[bool, object]:
    """Is a submodule's output ``real`` exactly ``out`` (or ``(out, None, ...)``)? And its form."""
    if isinstance(real, torch.Tensor):
        return torch.equal(real, out), None
    if type(real) is tuple and real and isinstance(real[0], torch.Tensor) and all(r is None for r in real[1:]):
        return torch.equal(real[0], out), len(real)
    return False, None


def _shaped(form, out: torch.Tensor):
    return out if form is None else (out,) + (None,) * (form - 1)


def run_layerwise(
    model: nn.Module,
    input_ids: torch.Tensor,
    process_layer: Callable[[int, str, nn.Module, LayerRunner], None],
    device: torch.device | str,
    batch_size: int = 8,
    desc: str = "calibrating",
    dtype: torch.dtype | None = None,
    stream=None,
    reference: bool = False,
) -> list[float]:
    """Calibrate ``model`` layer by layer; returns the seconds spent on each layer.

    Args:
        model: a supported causal LM (anywhere; layers are moved to ``device`` one at a time).
        input_ids: ``[num_samples, seq_len]`` calibration tokens.
        process_layer: ``(index, name_prefix, layer, runner)``; observes with ``runner.observe``
            and modifies the layer's weights in place. The engine then propagates; if
            ``process_layer`` returns a callable, it is called after the propagation.
        device: where each layer runs.
        batch_size: samples per forward.
        desc: progress-bar label.
        dtype: dtype of the stored hidden states (default: the model's).
        stream: a :class:`~llmcompress.streaming.LayerStream` when the layers live on the meta
            device: ``enter`` reads a layer's weights before it is processed, ``leave`` writes and
            frees it afterwards (``output.low_memory``).
        reference: also carry the unmodified model's hidden states and hand ``observe``'s
            callback each module's reference input (see the module docstring).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    hidden, kwargs = capture_layer_inputs(model, input_ids, device, batch_size)
    if dtype is not None:
        hidden = hidden.to(dtype)
    ref_hidden = hidden.clone() if reference else None
    prefix = decoder_layer_prefix(model)
    layers = decoder_layers(model)
    seconds = []
    for i, layer in enumerate(tqdm(layers, desc=desc, unit="layer")):
        t0 = time.perf_counter()
        if stream is not None:
            stream.enter(f"{prefix}.{i}", layer)
        home = next(layer.parameters()).device
        layer.to(device)
        ref = None
        if reference:
            # A copy taken before the method touches the layer: the unmodified weights.
            ref = (copy.deepcopy(layer).to(dtype) if dtype is not None else copy.deepcopy(layer), ref_hidden)
        runner = LayerRunner(layer, hidden, _to(kwargs, device, dtype), batch_size, reference=ref)
        finish = process_layer(i, f"{prefix}.{i}", layer, runner)
        runner.propagate()
        runner.release()
        del ref, runner
        if callable(finish):
            finish()
        layer.to(home)
        if stream is not None:
            stream.leave(f"{prefix}.{i}", layer)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        seconds.append(time.perf_counter() - t0)
    model.train(was_training)
    return seconds


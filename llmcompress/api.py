"""The public entry point: ``compress(model, recipe, ...)``."""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import data as data_mod
from . import export, models, report
from .card import model_card
from .context import Context
from .data import CalibrationConfig, EvaluationConfig
from .evaluate import Measurement, measure
from .methods.quant.record import quantized_modules
from .recipe import Recipe
from .registry import get_method

logger = logging.getLogger(__name__)


@dataclass
class Result:
    """What ``compress`` returns."""

    model: Any
    tokenizer: Any
    recipe: Recipe
    before: Measurement | None = None
    after: Measurement | None = None
    output_dir: Path | None = None
    notes: dict = field(default_factory=dict)
    reload_max_abs_diff: float | None = None
    pushed: Any = None  # hub.PushResult when the output was pushed

    def table(self) -> str:
        cols = [c for c in (self.before, self.after) if c is not None]
        return report.markdown(cols) if cols else ""


def default_device() -> torch.device:
    from .distributed import local_device

    return local_device()


def compress(
    model: str | torch.nn.Module | None,
    recipe: Recipe | str | Path,
    output_dir: str | Path | None = None,
    *,
    tokenizer=None,
    calibration: CalibrationConfig | dict | None = None,
    evaluation: EvaluationConfig | dict | bool | None = None,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    verify: bool | None = None,
    push_to_hub: str | None = None,
    private: bool = False,
    low_memory: bool | None = None,
) -> Result:
    """Apply a recipe to a model, optionally evaluate before/after and write the result.

    Everything that can be checked without the model (recipe, data files, output
    directory, model source and architecture) is checked before any weights load.

    Args:
        model: a model spec (alias, directory, ``.gguf``, hub id), a loaded model
            (then pass ``tokenizer``), or None to use the recipe's ``model``.
        recipe: a :class:`Recipe`, a YAML path or a built-in recipe name.
        output_dir: where to write the compressed model (None: keep it in memory).
        tokenizer: the tokenizer, when ``model`` is a loaded model.
        calibration: overrides the recipe's calibration section.
        evaluation: overrides the recipe's evaluation section; False disables it.
        overwrite: replace an existing ``output_dir``.
        device: where layer-by-layer work and evaluation run (default: cuda if available).
        verify: reload the output in a fresh process and compare logits (default: the
            recipe's ``output.verify``).
        push_to_hub: ``ORG/NAME`` to push the output to (default: the recipe's
            ``push_to_hub``); the token and organisation are checked before any work.
        private: create the Hub repo private.
        low_memory: read, compress and write one decoder layer at a time (default: the recipe's
            ``output.low_memory``); for models larger than RAM, see :mod:`llmcompress.streaming`.

    Returns:
        A :class:`Result` with the model, the before/after measurements and the output path.
    """
    if not isinstance(recipe, Recipe):
        recipe = Recipe.load(recipe)
    if isinstance(calibration, dict):
        calibration = CalibrationConfig.from_dict(calibration)
    if isinstance(evaluation, dict):
        evaluation = EvaluationConfig.from_dict(evaluation)
    calib_cfg = calibration or recipe.calibration
    eval_cfg = None if evaluation is False else (evaluation or recipe.evaluation)
    verify = recipe.output.verify if verify is None else verify
    device = torch.device(device) if device is not None else default_device()
    from . import distributed

    # Under accelerate launch / torchrun every process runs the recipe (the Trainer shares
    # the training between them); only the main one measures, writes and pushes.
    secondary = not distributed.is_main()
    if secondary:
        eval_cfg = None

    # ---- checks that need no weights
    distributed.check_launch(recipe)
    repo_id = push_to_hub or recipe.push_to_hub
    if repo_id:
        from . import hub

        if output_dir is None:
            from .errors import ConfigError

            raise ConfigError("push_to_hub needs an output directory to upload: pass output_dir", "push_to_hub")
        hub.preflight(repo_id)
    if output_dir is not None:
        export.check_output_dir(output_dir, overwrite)  # every process: they all fail before any work
    if secondary:
        output_dir, repo_id = None, None
    needs_calib = any(s.NEEDS_CALIBRATION for s in recipe.stages)
    for src in ([calib_cfg] if needs_calib and calib_cfg else []) + ([eval_cfg] if eval_cfg else []):
        data_mod.check_source(src)
    if model is None:
        model = recipe.model
    if model is None:
        from .errors import ConfigError

        raise ConfigError(f"recipe {recipe.source} names no model: pass one (--model)", "model")
    low_memory = recipe.output.low_memory if low_memory is None else low_memory
    if low_memory:
        from . import streaming

        streaming.check(recipe, output_dir, model)

    at_load = [s for s in recipe.stages if s.AT_LOAD]
    for stage in recipe.stages:
        stage.check_device(device)
    load_kwargs: dict = {}
    for stage in at_load:
        load_kwargs.update(stage.load_kwargs())
    load_dtype = load_kwargs.pop("dtype", recipe.dtype)
    if at_load and device.type != "cpu":
        load_kwargs["device_map"] = str(device)
    before = windows = None
    if isinstance(model, torch.nn.Module):
        from .errors import ConfigError

        if at_load:
            raise ConfigError(f"{at_load[0].METHOD} acts when the model loads: pass a model spec "
                              "(alias, directory, hub id), not a loaded model", "method")
        source = models.ModelSource(spec=type(model).__name__, kind="memory",
                                    hub_id=getattr(model.config, "_name_or_path", None))
        if tokenizer is None:
            raise ConfigError("pass tokenizer= along with a loaded model", "tokenizer")
        for stage in recipe.stages:
            stage.check_model(model.config)
    else:
        source = models.resolve(str(model))
        config = models.load_config(source)
        if config is not None:
            for stage in recipe.stages:
                stage.check_model(config, source)
        if low_memory:
            if secondary:
                from .errors import ConfigError

                raise ConfigError("low_memory runs in one process", "low_memory")
            return _compress_streaming(recipe, source, output_dir, overwrite=overwrite, device=device,
                                       calib_cfg=calib_cfg, eval_cfg=eval_cfg, load_dtype=load_dtype,
                                       repo_id=repo_id, private=private)
        if at_load and eval_cfg is not None:
            # Methods applied at load time never hold the original: measure it first, in the
            # dtype the quantized model keeps for its other modules (bf16 by default).
            logger.info("loading %s (original, for the 'before' column)", source.spec)
            original, tokenizer, source = models.load(source, dtype=load_dtype)
            if device.type != "cpu":
                original.to(device)
            windows = data_mod.evaluation_windows(tokenizer, eval_cfg)
            before = measure(original, "original", windows, eval_cfg,
                             size_on_disk=export.directory_size(source.path) if source.path else None)
            del original
        logger.info("loading %s", source.spec)
        model, tokenizer, source = models.load(source, dtype=load_dtype, **load_kwargs)
        for stage in at_load:
            stage.after_load(model, None)  # before anything runs the model
        if device.type != "cpu" and not at_load:
            model.to(device)

    from .methods.quant.gptq_format import FORMAT as GPTQ_FORMAT

    ctx = _context(recipe, tokenizer, device, calib_cfg if needs_calib else None, eval_cfg)

    if windows is None and eval_cfg is not None:
        windows = data_mod.evaluation_windows(tokenizer, eval_cfg, calib_cfg if needs_calib else None)
    result = Result(model=model, tokenizer=tokenizer, recipe=recipe)
    if before is not None:
        result.before = before
    elif eval_cfg is not None:
        size = export.directory_size(source.path) if source.path is not None else None
        result.before = measure(model, "original", windows, eval_cfg, size_on_disk=size)

    for i, stage in enumerate(recipe.stages, 1):
        if stage.AT_LOAD:
            continue
        logger.info("stage %d/%d: %s", i, len(recipe.stages), stage.METHOD)
        t0 = time.perf_counter()
        model = get_method(stage.METHOD).apply(model, stage, ctx) or model
        ctx.notes.setdefault("stage_seconds", {})[f"{i}:{stage.METHOD}"] = round(time.perf_counter() - t0, 2)
    result.model, result.notes = model, ctx.notes

    if eval_cfg is not None:
        result.after = measure(model, "compressed", windows, eval_cfg)

    if output_dir is not None:
        fmt = recipe.output.format if quantized_modules(model) else (at_load[0].METHOD if at_load else "dense")

        def finalize(tmp: Path):
            if result.after is not None:
                result.after.size_on_disk_mb = export.directory_size(tmp) / 2**20
            cols = [c for c in (result.before, result.after) if c is not None]
            if cols:
                report.write(cols, tmp, stem="llmcompress_report", title=recipe.name,
                             extra={"recipe": recipe.to_dict(), "notes": ctx.notes, "source": source.spec})
            per_layer = ctx.notes.get("prune", {}).get("per_layer_sparsity")
            if per_layer:
                report.sparsity_heatmap(per_layer, tmp / "llmcompress_sparsity.png")
            (tmp / "README.md").write_text(model_card(recipe, source, cols, fmt, ctx.notes))
            if verify:
                if fmt == GPTQ_FORMAT and importlib.util.find_spec("gptqmodel") is None:
                    # transformers needs optimum + gptqmodel to load v1 checkpoints; without
                    # them, check the packed tensors against the in-memory weights instead.
                    from .methods.quant.gptq_format import verify_dir

                    result.reload_max_abs_diff = verify_dir(model, tmp)
                else:
                    result.reload_max_abs_diff = check_reload(model, tmp)

        from .verify import check_reload

        export.save(model, tokenizer, output_dir, overwrite=overwrite, recipe_yaml=recipe.to_yaml(),
                    options={"format": recipe.output.format, "max_shard_size": recipe.output.max_shard_size},
                    finalize=finalize)
        result.output_dir = Path(output_dir)
        if repo_id:
            result.pushed = _push(output_dir, repo_id, private)
    return result


def _context(recipe: Recipe, tokenizer, device, calib_cfg, eval_cfg, **kwargs) -> Context:
    """The methods' context: the output format's scale dtype and, when ``calib_cfg`` is given, the
    calibration tokens (tokenized once, on first use)."""
    from .methods.quant.gptq_format import FORMAT as GPTQ_FORMAT, SCALE_DTYPE as GPTQ_SCALE_DTYPE

    ctx = Context(tokenizer=tokenizer, device=device, **kwargs,
                  scale_dtype=GPTQ_SCALE_DTYPE if recipe.output.format == GPTQ_FORMAT else None)
    if calib_cfg is not None:
        cache: dict = {}

        def calibration_ids():
            if "ids" not in cache:
                cache["ids"] = data_mod.calibration_batches(tokenizer, calib_cfg, eval_cfg)
            return cache["ids"]

        ctx.calibration = calibration_ids
        ctx.notes["calibration_source"] = f"{calib_cfg.source}, seed {calib_cfg.seed}"
    return ctx


def _push(output_dir, repo_id: str, private: bool):
    from . import hub

    try:
        return hub.push(output_dir, repo_id, private=private)
    except hub.HubError as exc:
        raise hub.HubError(f"{exc} The compressed model is saved in {output_dir}; push it later with "
                           f"`llmcompress push {output_dir} --repo-id {repo_id}`.") from None


def _compress_streaming(recipe: Recipe, source, output_dir, *, overwrite, device, calib_cfg, eval_cfg, load_dtype,
                        repo_id, private) -> Result:
    """``compress`` with ``low_memory``: one decoder layer in memory at a time (llmcompress.streaming)."""
    from . import streaming

    if eval_cfg is not None:
        logger.warning("low_memory: no before/after evaluation (it needs the whole model in memory); measure the "
                       "output afterwards with `llmcompress eval OUTPUT`")
    if recipe.output.verify:
        logger.info("low_memory: no in-memory model to compare a reload against; the reload check is skipped")
    logger.info("loading %s on the meta device (decoder layers are read one at a time)", source.spec)
    model, tokenizer, stream = streaming.load_skeleton(source, models.DTYPES.get(load_dtype, load_dtype))
    ctx = _context(recipe, tokenizer, device, calib_cfg, eval_cfg, layer_stream=stream)
    ctx.notes["low_memory"] = True
    stream.options = {"format": recipe.output.format}
    (stage,) = recipe.stages
    with export.atomic_directory(output_dir, overwrite) as tmp:
        stream.writer = export.ShardWriter(tmp, export.parse_size(recipe.output.max_shard_size))
        t0 = time.perf_counter()
        model = get_method(stage.METHOD).apply(model, stage, ctx) or model
        ctx.notes["stage_seconds"] = {f"1:{stage.METHOD}": round(time.perf_counter() - t0, 2)}
        # the non-layer tensors (the layers are on the meta device by now), tied ones once
        stream.writer.add({k: v for k, v in export.plain_state_dict(model).items() if not v.is_meta})
        stream.writer.close()
        export.write_config(model, tmp, export.serialize(model, {**stream.options, "config_only": True}))
        fmt = recipe.output.format
        export.write_extras(tmp, tokenizer, recipe.to_yaml(),
                            {"recipe": recipe.to_dict(), "notes": ctx.notes, "source": source.spec},
                            model_card(recipe, source, [], fmt, ctx.notes))
    result = Result(model=None, tokenizer=tokenizer, recipe=recipe, output_dir=Path(output_dir), notes=ctx.notes)
    if repo_id:
        result.pushed = _push(output_dir, repo_id, private)
    return result

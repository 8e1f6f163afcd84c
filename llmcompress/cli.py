"""``llmcompress`` command line: run, eval, push, recipes. Thin: parse, then call the API."""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import LLMCompressError

logger = logging.getLogger("llmcompress")


def _cmd_run(args) -> int:
    from .api import compress
    from .recipe import Recipe

    recipe = Recipe.load(args.recipe)
    output = args.output or f"outputs/{recipe.name}"
    evaluation = False if args.no_eval else None
    result = compress(args.model, recipe, output, overwrite=args.overwrite, device=args.device,
                      evaluation=evaluation, verify=False if args.no_verify else None,
                      push_to_hub=args.push_to_hub, private=args.private,
                      low_memory=True if args.low_memory else None)
    if result.output_dir is None:  # a secondary process under accelerate launch: the main one reports
        return 0
    if result.before or result.after:
        print(result.table())
    if result.reload_max_abs_diff is not None:
        print(f"reload check (plain from_pretrained, fresh process): max |logit diff| = {result.reload_max_abs_diff:.3g}")
    print(f"wrote {result.output_dir}")
    if result.pushed is not None:
        print(result.pushed.summary())
    return 0


def _cmd_push(args) -> int:
    from .hub import push

    result = push(args.folder, args.repo_id, private=args.private, revision=args.revision,
                  commit_message=args.commit_message)
    print(result.summary())
    return 0


def _cmd_eval(args) -> int:
    from . import data, models, report
    from .api import default_device
    from .evaluate import measure
    from .export import directory_size

    cfg = data.EvaluationConfig(source=args.data, max_tokens=args.max_tokens, seq_len=args.seq_len,
                                latency=not args.no_latency)
    data.check_source(cfg)
    model, tok, source = models.load(args.model, dtype=args.dtype)
    model.to(args.device or default_device())
    windows = data.evaluation_windows(tok, cfg)
    size = directory_size(source.path) if source.path else None
    m = measure(model, source.spec, windows, cfg, size_on_disk=size)
    print(report.markdown([m]))
    if args.report:
        paths = report.write([m], args.report, stem="eval")
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_recipes(args) -> int:
    from .recipe import builtin_recipes, describe

    recipes = builtin_recipes()
    width = max((len(n) for n in recipes), default=0)
    for name, path in recipes.items():
        print(f"{name.ljust(width)}  {describe(path)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmcompress", description="Compress Hugging Face causal LMs with recipes.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="apply a recipe to a model and write the result")
    run.add_argument("recipe", help="recipe YAML file or built-in recipe name (see `llmcompress recipes`)")
    run.add_argument("--model", help="alias, local directory, .gguf file or hub id (default: the recipe's model)")
    run.add_argument("--output", help="output directory (default: outputs/RECIPE_NAME)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    run.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    run.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation")
    run.add_argument("--no-verify", action="store_true", help="skip the fresh-process reload check")
    run.add_argument("--low-memory", action="store_true",
                     help="read, compress and write one decoder layer at a time (models larger than RAM; gptq)")
    run.add_argument("--push-to-hub", metavar="ORG/NAME", help="push the output to this Hub repo "
                     "(default: the recipe's push_to_hub); token from HF_TOKEN or `hf auth login`")
    run.add_argument("--private", action="store_true", help="create the Hub repo private")
    run.set_defaults(func=_cmd_run)

    ps = sub.add_parser("push", help="upload an output directory to the Hugging Face Hub (or HF_ENDPOINT)")
    ps.add_argument("folder", help="directory written by `llmcompress run`")
    ps.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="Hub repo, created when missing")
    ps.add_argument("--private", action="store_true", help="create the repo private")
    ps.add_argument("--revision", help="branch to push to, created from main when missing (default: main)")
    ps.add_argument("--commit-message", help="default: 'Upload DIR with llmcompress'")
    ps.set_defaults(func=_cmd_push)

    ev = sub.add_parser("eval", help="measure a model: perplexity, size, memory, latency")
    ev.add_argument("model", help="alias, local directory, .gguf file or hub id")
    ev.add_argument("--data", default="wiki_eval", help="evaluation text: built-in name, file or datasets name")
    ev.add_argument("--max-tokens", type=int, default=4096, help="evaluation tokens (default 4096)")
    ev.add_argument("--seq-len", type=int, default=512, help="window length (default 512)")
    ev.add_argument("--dtype", help="float32 | bfloat16 | float16 (default: the checkpoint's)")
    ev.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    ev.add_argument("--no-latency", action="store_true", help="skip latency measurements")
    ev.add_argument("--report", help="folder for eval.md / eval.json / eval.png")
    ev.set_defaults(func=_cmd_eval)

    rc = sub.add_parser("recipes", help="list the built-in recipes")
    rc.set_defaults(func=_cmd_recipes)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (LLMCompressError, KeyboardInterrupt) as exc:
        if args.debug:
            raise
        msg = "interrupted; nothing was written" if isinstance(exc, KeyboardInterrupt) else str(exc)
        print(f"llmcompress: error: {msg}", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 2
    finally:
        from .distributed import shutdown

        shutdown()


if __name__ == "__main__":
    sys.exit(main())

"""``vlm-trainer``: the trainer image's entry point.

Subcommands::

    vlm-trainer sft --config cfg.yaml [key=value ...]     train (or resume) with the SFT recipe
    vlm-trainer eval --model DIR --data FILE              exact-match accuracy, JSON report
    vlm-trainer validate-data FILE [--mode sft|dpo|rl]    list bad lines, or summarise the file
    vlm-trainer make-tiny-model DIR [--vocab-size N]      offline tiny Qwen3-VL for tests/demo
    vlm-trainer make-demo-data DIR                        synthetic SFT/DPO/RL image datasets
    vlm-trainer verify-checkpoint DIR                     re-hash a checkpoint (operator Job)
    vlm-trainer promote --checkpoint DIR --output DIR     standalone HF model (operator Job)
    vlm-trainer dpo --config cfg.yaml [key=value ...]     train (or resume) with the DPO recipe
    vlm-trainer rl --config cfg.yaml [key=value ...]      train (or resume) with the RL recipe
    vlm-trainer plot RUN_DIR [-o curves.png]              PNG of loss, eval and reward curves
    vlm-trainer launch torchrun [ARGS ...]                PID 1 of a several-process pod (launch.py)

``--config`` defaults to ``/etc/vlm-trainer/config.yaml`` (where the operator mounts it) when
that file exists. Exit codes (``exit_codes.py``, shared with the operator): 0 success; 1
``validate-data`` found bad lines (every bad line is printed, one per line,
``file:line: json.path: reason``); 2 bad usage; 65 a training command refused its data
(EX_DATAERR); 78 a bad config (EX_CONFIG); 74 a snapshot could not be written (disk full);
73 ``promote``'s output model exists (no ``--overwrite``); 75 stopped on SIGTERM after writing
a snapshot (``graceful.py``; not a failure); 3 any other failure. Inside a pod the reason is
also written to the termination message, where the operator reads it: 65, 74 and 78 fail the
TrainerJob at once (``DataInvalid``, ``StorageFull``, ``InvalidSpec``) since a retry cannot fix
them.
Heavy imports (torch, transformers) happen inside the subcommands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from .config import DEFAULT_CONFIG_PATH, ConfigError, DPOConfig, RLConfig, SFTConfig, load_config
from .exit_codes import (
    EXIT_CONFIG,
    EXIT_DATA_INVALID,
    EXIT_DATA_REFUSED,
    EXIT_FAILED,
    EXIT_MODEL_EXISTS,
    EXIT_OK,
    EXIT_PREEMPTED,
    EXIT_STORAGE_FULL,
)


def _config_path(arg: str | None) -> str | None:
    if arg:
        return arg
    return DEFAULT_CONFIG_PATH if os.path.exists(DEFAULT_CONFIG_PATH) else None


# ------------------------------------------------------------------------------------------------
# Subcommands


def cmd_sft(args) -> int:
    cfg = load_config(SFTConfig, _config_path(args.config), args.overrides)
    from .recipes import sft

    summary = sft.main(cfg)
    return EXIT_OK if summary else EXIT_FAILED


def cmd_dpo(args) -> int:
    cfg = load_config(DPOConfig, _config_path(args.config), args.overrides)
    from .recipes import dpo

    return EXIT_OK if dpo.main(cfg) else EXIT_FAILED


def cmd_rl(args) -> int:
    cfg = load_config(RLConfig, _config_path(args.config), args.overrides)
    from .recipes import rl

    return EXIT_OK if rl.main(cfg) else EXIT_FAILED


def cmd_launch(args) -> int:
    from .launch import main as launch

    return launch(args.argv)


def cmd_eval(args) -> int:
    from .evaluate import evaluate_file
    from .model import load_for_inference, quiet_transformers

    quiet_transformers()
    if args.num_threads:
        import torch

        torch.set_num_threads(args.num_threads)
    model, processor = load_for_inference(args.model)
    report = evaluate_file(
        model,
        processor,
        args.data,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
    )
    report["model"] = str(args.model)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return EXIT_OK


def cmd_validate(args) -> int:
    from .data.limits import DataLimits
    from .data.validate import validate_file

    files: list[str] = list(args.files)
    renderer = None
    limits = None  # the defaults of data/limits.py, or the training config's
    cfg_path = _config_path(args.config) if args.config or not files else None
    if cfg_path:  # the training config names the files, the processor and the limits
        config_class = {"sft": SFTConfig, "dpo": DPOConfig, "rl": RLConfig}[args.mode]
        cfg = load_config(config_class, cfg_path, args.overrides)
        files = files or [cfg.dataset] + ([cfg.eval_dataset] if cfg.eval_dataset else [])
        args.model = args.model or cfg.processor_path
        limits = DataLimits.from_config(cfg)
        args.max_seq_len = args.max_seq_len or cfg.max_seq_len
        args.train_on, args.on_truncation = cfg.train_on, cfg.on_truncation
        args.reward = args.reward or getattr(cfg, "reward", None)
    if not files:
        raise ConfigError("validate-data: give a FILE or --config")
    if args.model:
        from .data.render import Renderer
        from .model import load_processor, quiet_transformers

        quiet_transformers()
        renderer = Renderer(
            load_processor(args.model),
            args.max_seq_len or 4096,
            args.train_on,
            args.on_truncation,
            limits=limits,
        )
    from .config import local_path

    reward = None
    if args.mode == "rl":  # the reward's required fields (default: the RL config's default)
        from .rewards import RewardError, load_reward

        try:
            reward = load_reward(args.reward or RLConfig.model_fields["reward"].default)
        except RewardError as e:
            raise ConfigError(f"--reward: {e}") from e
    bad = False
    for f in files:
        summary = validate_file(
            local_path(f),
            args.mode,
            renderer,
            max_issues=args.max_issues,
            limits=limits,
            reward=reward,
        )
        for issue in summary.issues:
            print(issue)
        if summary.bad_records > len(summary.issues):
            print(f"{f}: ... {summary.bad_records - len(summary.issues)} more bad lines not shown")
        if not summary.ok:
            bad = True
            why = "no records" if summary.records == 0 else "invalid"
            print(f"{f}: {summary.bad_records} of {summary.records} records {why}", file=sys.stderr)
        else:
            print(json.dumps(summary.as_dict()))
    return EXIT_DATA_INVALID if bad else EXIT_OK


def cmd_plot(args) -> int:
    from .plot import plot_run

    print(plot_run(Path(args.run_dir), args.output))
    return EXIT_OK


def cmd_make_tiny_model(args) -> int:
    from .model import quiet_transformers
    from .tiny import make_tiny_model

    quiet_transformers()
    print(make_tiny_model(args.dir, seed=args.seed, vocab_size=args.vocab_size))
    return EXIT_OK


def cmd_make_demo_data(args) -> int:
    from .demo_data import make_demo_data

    counts = make_demo_data(
        args.dir, n_train=args.n_train, n_eval=args.n_eval, size=args.image_size, seed=args.seed
    )
    print(json.dumps({"dir": str(args.dir), "files": counts}))
    return EXIT_OK


def cmd_verify_checkpoint(args) -> int:
    from .promote import PromotionError, verify_checkpoint

    try:
        info = verify_checkpoint(Path(args.dir))
    except PromotionError as e:
        _termination_message(str(e))
        print(e, file=sys.stderr)
        return EXIT_FAILED
    text = json.dumps(info)
    _termination_message(text)
    print(text)
    return EXIT_OK


def cmd_promote(args) -> int:
    from .model import quiet_transformers
    from .promote import ModelExists, promote

    quiet_transformers()
    try:
        result = promote(Path(args.checkpoint), Path(args.output), args.base_model, args.overwrite)
    except ModelExists as e:
        _termination_message(f"ModelExists: {e}")
        print(e, file=sys.stderr)
        return EXIT_MODEL_EXISTS
    text = json.dumps(result)
    _termination_message(text)
    print(text)
    return EXIT_OK


def _termination_message(text: str) -> None:
    """Kubernetes shows the container's termination message in the pod status. Written only
    inside a pod (where the kubelet created the file) or where ``VLM_TERMINATION_LOG`` says."""
    path = os.environ.get("VLM_TERMINATION_LOG")
    if path is None:
        path = "/dev/termination-log"
        if not (os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(path)):
            return
    try:
        with open(path, "w") as f:
            f.write(text[:4000])
    except OSError:  # not in a pod
        pass


# ------------------------------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlm-trainer", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sft", help="supervised fine-tuning")
    s.add_argument("--config", help=f"YAML config (default {DEFAULT_CONFIG_PATH} if present)")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys")
    s.set_defaults(func=cmd_sft)

    for name, what, func in (
        ("dpo", "direct preference optimisation", cmd_dpo),
        ("rl", "reinforcement learning (GRPO-style, verifiable rewards)", cmd_rl),
    ):
        r = sub.add_parser(name, help=what)
        r.add_argument("--config", help=f"YAML config (default {DEFAULT_CONFIG_PATH} if present)")
        r.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys")
        r.set_defaults(func=func)

    la = sub.add_parser("launch", help="run torchrun as a pod's PID 1 (graceful SIGTERM)")
    la.add_argument("argv", nargs=argparse.REMAINDER, metavar="torchrun ARGS")
    la.set_defaults(func=cmd_launch)

    # The operator's short Jobs on a Checkpoint (promote.py).
    vc = sub.add_parser("verify-checkpoint", help="re-hash a checkpoint against its manifest")
    vc.add_argument("dir")
    vc.set_defaults(func=cmd_verify_checkpoint)
    pr = sub.add_parser("promote", help="write a standalone HF model from a checkpoint")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--output", required=True)
    pr.add_argument("--base-model", default=None, help="base of a LoRA checkpoint")
    pr.add_argument(
        "--overwrite", action="store_true", help="replace a model that exists under --output"
    )
    pr.set_defaults(func=cmd_promote)

    e = sub.add_parser("eval", help="greedy exact-match accuracy on an SFT-format file")
    e.add_argument("--model", required=True, help="model or checkpoint directory")
    e.add_argument(
        "--data", required=True, help="JSONL file; the last assistant message is the answer"
    )
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--max-new-tokens", type=int, default=32)
    e.add_argument("--limit", type=int, default=None, help="only the first N records")
    e.add_argument("--num-threads", type=int, default=0)
    e.add_argument("--output", help="also write the JSON report here")
    e.set_defaults(func=cmd_eval)

    v = sub.add_parser("validate-data", help="check a dataset; list every bad line")
    v.add_argument("files", nargs="*", metavar="FILE")
    v.add_argument("--mode", choices=["sft", "dpo", "rl"], default="sft")
    v.add_argument("--config", help="training config: its dataset, eval_dataset and processor")
    v.add_argument("--model", help="processor path or hub id: adds token statistics")
    v.add_argument("--max-seq-len", type=int, default=None)
    v.add_argument(
        "--train-on", choices=["all_assistant", "last_assistant"], default="all_assistant"
    )
    v.add_argument("--on-truncation", choices=["skip", "error"], default="skip")
    v.add_argument("--max-issues", type=int, default=1000, help="stop listing after N issues")
    v.add_argument(
        "--reward",
        help="rl: the reward (built-in or module:function) whose required fields every record "
        "must carry; default: the config's, else exact_match",
    )
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="key=value")
    v.set_defaults(func=cmd_validate)

    pl = sub.add_parser("plot", help="a PNG of a run's loss, eval and reward curves")
    pl.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (holds metrics.jsonl)")
    pl.add_argument("-o", "--output", help="PNG to write (default RUN_DIR/curves.png)")
    pl.set_defaults(func=cmd_plot)

    t = sub.add_parser("make-tiny-model", help="build the offline tiny Qwen3-VL")
    t.add_argument("dir")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--vocab-size", type=int, default=320, help="tokens (>= 320; Qwen3-VL's is 151936)"
    )
    t.set_defaults(func=cmd_make_tiny_model)

    d = sub.add_parser("make-demo-data", help="write synthetic colour datasets")
    d.add_argument("dir")
    d.add_argument("--n-train", type=int, default=200)
    d.add_argument("--n-eval", type=int, default=40)
    d.add_argument("--image-size", type=int, default=64)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_make_demo_data)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .data.jsonl import DataInvalidError
    from .graceful import Stopped

    try:
        return args.func(args)
    except Stopped as e:  # SIGTERM: a snapshot was written; the next pod resumes from it
        print(e, file=sys.stderr)
        _termination_message(f"preempted: {e}")
        if marker := os.environ.get("VLM_STOP_MARKER"):  # for launch.py, under torchrun
            Path(marker).write_text(f"{e}\n")
        return EXIT_PREEMPTED
    except DataInvalidError as e:
        report = e.report()
        print(report, file=sys.stdout)
        _termination_message(report)
        return EXIT_DATA_REFUSED
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        _termination_message(f"config error: {e}")
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if getattr(e, "exit_code", None) == EXIT_STORAGE_FULL:  # checkpoint.SnapshotWriteError
            print(f"storage error: {e}", file=sys.stderr)  # a retry would hit the same wall
            _termination_message(f"storage full: {e}")
            return EXIT_STORAGE_FULL
        traceback.print_exc()
        _termination_message(f"{type(e).__name__}: {e}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

"""What a training step's forward keeps for its backward, tensor by tensor: which module saved it, its shape and size.

Run:

    .venv/bin/python benchmarks/bench_saved_tensors.py --real                  # SmolLM2-135M, UltraFeedback
    .venv/bin/python benchmarks/bench_saved_tensors.py --real --padded-inputs  # the layer inputs with their padding

The trainer of ``bench_step_memory.py`` (DPO, float32, gradient checkpointing, batch 4 pairs) runs the
forward of its first micro-batch (``objective.batch_loss``) under ``torch.autograd.graph.saved_tensors_hooks``
that record every tensor autograd keeps, counted once per storage, under the module that was running
(``layers.N`` folded into one row). The checkpointed layer inputs the trainer keeps without their
padding (``train/unpadded_checkpoints.py``) pass through that module's own hooks, so they are counted
there. Parameters (the tied LM head's weight) are listed but are the weights, not activations.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from collections import defaultdict
from pathlib import Path

MIB = 2**20


def census(args) -> None:
    import torch

    import prefpool.train.trainer as trainer_module
    import prefpool.train.unpadded_checkpoints as unpadded
    from prefpool.train.config import TrainConfig
    from prefpool.train.objective import batch_loss

    torch.set_num_threads(args.threads)
    kept_unpadded = []
    if args.padded_inputs:
        trainer_module.keep_layer_inputs_unpadded = lambda model: None
    else:
        drop = unpadded._drop_padding

        def recorded(hidden, index):
            packed = drop(hidden, index)
            kept_unpadded.append(packed[0])
            return packed

        unpadded._drop_padding = recorded
    cfg = TrainConfig(
        model=str(args.model),
        data=str(args.data),
        output_dir=str(Path(tempfile.mkdtemp(prefix="bench-saved-")) / "run"),
        loss="dpo",
        beta=0.1,
        lr=1e-6,
        batch_size=args.batch,
        max_steps=1,
        gradient_checkpointing=True,
        progress=False,
    )
    trainer = trainer_module.Trainer(cfg)
    model = trainer.model
    batch = trainer._next_batch()
    lengths = [len(p) + len(c) for p, c in trainer.spec.scored(batch)]
    running: list[str] = []
    for name, module in model.named_modules():
        module.register_forward_pre_hook(lambda m, a, n=name: running.append(n))
        module.register_forward_hook(lambda m, a, o: (running.pop(), None)[1])
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    rows: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])

    def pack(tensor):
        storage = tensor.untyped_storage()
        where = re.sub(r"layers\.\d+", "layers.N", running[-1] if running else "<loss>") or "<model>"
        if storage.data_ptr() in parameters:
            where += " (a parameter)"
        row = rows[(where, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))]
        row[0] += 1
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            row[1] += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = batch_loss(model, batch, cfg, pad_token_id=trainer.pad, generator=trainer.state.generator)
    for tensor in kept_unpadded:
        row = rows[("layer inputs, unpadded (unpadded_checkpoints)", tuple(tensor.shape), "float32")]
        row[0] += 1
        row[1] += tensor.untyped_storage().nbytes()
    print(
        f"{len(lengths)} sequences of {lengths} tokens: {sum(lengths):,} real, "
        f"{len(lengths) * max(lengths):,} padded; attention {model.config._attn_implementation}"
    )
    activations = 0
    for (where, shape, dtype), (count, size) in sorted(rows.items(), key=lambda kv: -kv[1][1]):
        if size >= args.min_kib * 1024:
            print(f"  {size / MIB:8.1f} MiB  x{count:<3} {where:<48} {shape} {dtype}")
        activations += 0 if "parameter" in where else size
    hidden = f"rows under {args.min_kib} KiB not shown"
    print(f"  {activations / MIB:8.1f} MiB kept for backward, parameters aside ({hidden}); loss {out.loss.tolist()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="SmolLM2-135M-Instruct and UltraFeedback pairs")
    parser.add_argument("--model-cache", type=Path, default=Path("~/.cache/prefpool-bench"))
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--padded-inputs", action="store_true", help="undo the unpadded layer inputs")
    parser.add_argument("--min-kib", type=int, default=64)
    args = parser.parse_args()
    from bench_trainer_vs_trl import make_real_table, make_table, real_model
    from harness import small_llama

    work = Path(tempfile.mkdtemp(prefix="bench-saved-"))
    if args.real:
        args.model = real_model(args.model_cache.expanduser())
        if args.model is None:
            raise SystemExit("SmolLM2 is not available here (see bench_trainer_vs_trl --real)")
        args.data = make_real_table(work / "data", args.model, args.rows, args.max_length)
    else:
        args.model = small_llama(work / "model", vocab=8192, hidden=256, layers=4)
        args.data = make_table(work / "data", args.model, args.rows, (40, 90), args.max_length)
    census(args)


if __name__ == "__main__":
    main()

"""The hf engine: a batched sampling loop over a transformers causal LM.

``model.generate`` draws every row from one global RNG, so a sample would
depend on its batch. Here each row has its own ``torch.Generator`` seeded with
its request's seed, prompts are left-padded with an attention mask and explicit
position ids (a row's logits do not depend on its padding, up to float
rounding), and finished rows leave the batch and its KV cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from prefpool.pipeline.engines.generation import Completion, Request
from prefpool.pipeline.engines.sampling import SamplingParams, next_token_probs
from prefpool.pipeline.model.info import ModelInfo


class HFEngine:
    name = "hf"

    def __init__(self, info: ModelInfo, *, batch_size: int, device: str, model: torch.nn.Module | None = None) -> None:
        """``model``: an already loaded model to sample from (e.g. a policy during training, probed
        without saving it); it must be in eval mode or have no dropout. Default: load ``info.source``
        (in the weights' own dtype). ``device``: a torch device string (``device.resolve_device``'s)."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.info = info
        self.batch_size = batch_size
        self.device = torch.device(device)
        if model is None:
            model = info.source.causal_lm(dtype="auto").to(self.device).eval()
        self.model = model

    def generate(
        self, requests: Sequence[Request], params: SamplingParams, *, on_done: Callable[[int], None]
    ) -> list[Completion]:
        # batches of similar prompt lengths waste less on padding; the order cannot change a sample
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt_tokens))
        results: list[Completion | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            for i, completion in zip(batch, self._batch([requests[i] for i in batch], params), strict=True):
                results[i] = completion
                on_done(len(completion.token_ids))
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _batch(self, requests: list[Request], params: SamplingParams) -> list[Completion]:
        from transformers import DynamicCache

        rows = len(requests)
        width = max(len(r.prompt_tokens) for r in requests)
        input_ids = torch.full((rows, width), self.info.pad_token_id, dtype=torch.long)  # (B, L)
        mask = torch.zeros((rows, width), dtype=torch.long)  # (B, L)
        for row, request in enumerate(requests):
            input_ids[row, width - len(request.prompt_tokens) :] = torch.tensor(request.prompt_tokens)
            mask[row, width - len(request.prompt_tokens) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L): a row's first real token is at 0
        input_ids, mask, positions = (t.to(self.device) for t in (input_ids, mask, positions))
        generators = [torch.Generator(device=self.device).manual_seed(r.seed) for r in requests]
        eos = set(params.eos_token_ids)
        tokens: list[list[int]] = [[] for _ in requests]
        finish: list[str | None] = [None] * rows
        active = list(range(rows))  # request index of each row still in the batch
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(input_ids, mask, positions, cache)  # (B, V)
        next_position = positions[:, -1] + 1  # (B,)
        while True:
            drawn = self._draw(logits, [generators[i] for i in active], params)  # (B,)
            for row, token in zip(active, drawn.tolist(), strict=True):
                if token in eos:
                    finish[row] = "stop"
                else:
                    tokens[row].append(token)
                    if len(tokens[row]) == params.max_new_tokens:
                        finish[row] = "length"
            keep = [k for k, row in enumerate(active) if finish[row] is None]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, next_position, drawn = mask[index], next_position[index], drawn[index]
                active = [active[k] for k in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            logits = self._forward(drawn[:, None], mask, next_position[:, None], cache)
            next_position = next_position + 1
        return [Completion(tuple(t), f) for t, f in zip(tokens, finish, strict=True)]  # type: ignore[arg-type]

    def _forward(self, input_ids, mask, positions, cache) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
        )
        return out.logits[:, -1, :]  # (B, V)

    @staticmethod
    def _draw(logits: torch.Tensor, generators: list[torch.Generator], params: SamplingParams) -> torch.Tensor:
        if params.greedy:
            return logits.float().argmax(dim=-1)
        probs = next_token_probs(logits, temperature=params.temperature, top_p=params.top_p)  # (B, V)
        draws = [torch.multinomial(probs[k], 1, generator=g) for k, g in enumerate(generators)]
        return torch.cat(draws)  # (B,)

"""Where a model comes from: the one place a ``--model`` reference becomes files transformers can load.

Every command that takes a model (``generate``, ``logprobs``, ``score``'s reward
model, ``train``'s ``model``, ``eval``'s ``--model`` and ``--ref-model``,
``online``'s reference and policy) passes what the user wrote to
``resolve_model``, and loads through the ``ModelSource`` it returns. Three
kinds are accepted, tried in this order:

- ``gguf``: a path ending in ``.gguf``, a llama.cpp file. transformers reads it
  with ``from_pretrained(parent folder, gguf_file=name)`` (needs the ``gguf``
  package, ``pip install 'prefpool[gguf]'``) and dequantizes the weights;
  tokenizer, chat template and config come from the file's metadata, never from
  other files beside it. The vllm engine, which cannot read it, gets a float
  folder converted from it once (``gguf_float.float_folder``).
- ``folder``: an existing local folder in ``save_pretrained`` layout.
- ``hub``: a Hub model id, ``owner/name`` or ``owner/name@revision``. It is
  taken from the local Hugging Face cache (``HF_HUB_CACHE``) when the cache
  holds it, with no network call, so the same id always means the same
  snapshot on a machine; otherwise it is downloaded (config, tokenizer, chat
  template and ``*.safetensors`` only), unless ``HF_HUB_OFFLINE=1``, where a
  missing id is a clear error saying how to fetch it.

The weights hash (``cache_key.weights_hash``) reads ``weight_files``: a folder's
or snapshot's ``config.json`` and ``*.safetensors`` (a snapshot holds links to
the same bytes, so it hashes as a copy of the same files in a folder does), or
the ``.gguf`` file itself.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prefpool.core.errors import InputError, MissingInputError

SourceKind = Literal["folder", "hub", "gguf"]
GGUF_SUFFIX = ".gguf"
# owner/name[@revision]; a bare name (gpt2) is a Hub id too, as transformers reads it.
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?)(?:@(?P<revision>[\w./-]+))?")
# What a download fetches: enough to load and hash the model, not every file of the repo.
HUB_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt", "*.tiktoken")
ACCEPTED = "a local model folder (save_pretrained layout), a .gguf file, or a Hub model id (owner/name)"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model reference.

    ``folder`` is what ``from_pretrained`` takes (a snapshot folder for a Hub id,
    the file's folder for a GGUF), ``load_kwargs`` the extra arguments (``gguf_file``).
    """

    given: str  # what the user wrote
    kind: SourceKind
    folder: Path
    gguf_file: str | None = None
    repo_id: str | None = None
    revision: str | None = None  # the snapshot's commit, for a Hub id

    def __str__(self) -> str:  # messages name the model as the user wrote it
        return self.given

    @property
    def load_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    @property
    def path(self) -> Path:
        """The file or folder the weights are read from (the .gguf file itself for a GGUF)."""
        return self.folder / self.gguf_file if self.gguf_file else self.folder

    def weight_files(self, suffixes: tuple[str, ...] = (".safetensors",)) -> list[Path]:
        """The files holding the weights, sorted: ``*<suffix>`` of the folder, or the .gguf file."""
        if self.gguf_file:
            return [self.path]
        return sorted(p for p in self.folder.iterdir() if p.suffix in suffixes and p.is_file())

    def describe(self) -> dict[str, Any]:
        """For manifests and model cards: where the model came from."""
        out: dict[str, Any] = {"source": self.kind, "path": str(self.path.resolve())}
        if self.repo_id:
            out.update(repo_id=self.repo_id, revision=self.revision)
        return out

    def for_vllm(self) -> str:
        """The path ``vllm.LLM`` takes: the folder, or for a GGUF its converted float folder (``gguf_float``)."""
        if self.gguf_file:
            from prefpool.pipeline.model.gguf_float import float_folder

            return str(float_folder(self))
        return str(self.folder)

    # -- loading, with the same arguments everywhere ------------------------------------------------

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.folder), **self.load_kwargs)

    def config(self, *, trust_remote_code: bool = False):
        """The model's config; a GGUF's is parsed from the file once per process (read it, do not change it)."""
        if self.gguf_file:
            return _gguf_config(str(self.path), self.path.stat().st_mtime_ns)
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(self.folder), trust_remote_code=trust_remote_code)

    def generation_config(self) -> dict:
        """The non-default values of ``generation_config.json`` (a GGUF: those its config implies)."""
        from transformers import GenerationConfig

        if self.gguf_file:
            return GenerationConfig.from_model_config(self.config()).to_diff_dict()
        try:
            return GenerationConfig.from_pretrained(str(self.folder)).to_diff_dict()
        except OSError:  # transformers' "no generation_config.json in this folder"
            return {}

    def causal_lm(self, dtype: Any = "auto"):
        """``AutoModelForCausalLM`` on the CPU; ``dtype`` a torch dtype or "auto".

        A GGUF's model is the plain float model of its dequantized weights (``gguf_float.plain_causal_lm``),
        so a model trained from it saves as ordinary safetensors.
        """
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(self.folder), dtype=dtype, **self.load_kwargs)
        if self.gguf_file:
            from prefpool.pipeline.model.gguf_float import plain_causal_lm

            return plain_causal_lm(model)
        return model

    def sequence_classifier(self, dtype: Any, *, trust_remote_code: bool = False):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(
            str(self.folder), dtype=dtype, trust_remote_code=trust_remote_code, **self.load_kwargs
        )


@functools.lru_cache(maxsize=4)
def _gguf_config(path: str, mtime_ns: int):
    # Reading a GGUF's metadata takes seconds (its whole vocabulary is in it), and a stage asks for the
    # config several times (context length, generation defaults, the model class).
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name)


def resolve_model(model: str | Path | ModelSource, *, what: str = "model") -> ModelSource:
    """The ``ModelSource`` of ``model`` (see the module docstring); ``what`` names the option in errors.

    Raises ``MissingInputError`` for a path that does not exist and an id the
    cache does not hold (offline), ``InputError`` for a file that is not a model.
    """
    if isinstance(model, ModelSource):
        return model
    given = str(model)
    path = Path(given).expanduser()
    if path.suffix.lower() == GGUF_SUFFIX:
        return _gguf(given, path, what)
    if path.is_dir():
        return ModelSource(given, "folder", path)
    if path.exists():
        raise InputError(f"{what} {given}: is a file, not {ACCEPTED}")
    match = HUB_ID.fullmatch(given)
    if match is None or ".." in given or given.startswith((".", "/", "~")):
        raise MissingInputError(f"{what} {given}: no such folder; expected {ACCEPTED}")
    return _hub(given, match["repo"], match["revision"], what)


def _gguf(given: str, path: Path, what: str) -> ModelSource:
    if not path.is_file():
        raise MissingInputError(f"{what} {given}: no such .gguf file")
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError:
        raise InputError(
            f"{what} {given}: reading a .gguf file needs the gguf package: pip install 'prefpool[gguf]'"
        ) from None
    return ModelSource(given, "gguf", path.parent, gguf_file=path.name)


def _hub(given: str, repo_id: str, revision: str | None, what: str) -> ModelSource:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cache = constants.HF_HUB_CACHE
    try:
        folder = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:
        folder = None
    if folder is None and constants.HF_HUB_OFFLINE:
        raise MissingInputError(
            f"{what} {given}: not a local folder, and the Hub model {repo_id}"
            f"{'@' + revision if revision else ''} is not in the local Hugging Face cache ({cache}) while "
            f"HF_HUB_OFFLINE is set. Fetch it on a machine with network (`hf download {repo_id}`, into the same "
            "HF_HUB_CACHE), or pass a local folder or .gguf file"
        )
    if folder is None:
        try:
            folder = snapshot_download(repo_id, revision=revision, allow_patterns=list(HUB_PATTERNS))
        except (LocalEntryNotFoundError, HfHubHTTPError) as exc:  # not found, gated, no network
            raise MissingInputError(
                f"{what} {given}: not a local folder, not in the local Hugging Face cache ({cache}), and the "
                f"download failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            ) from None
    folder = Path(folder)
    return ModelSource(given, "hub", folder, repo_id=repo_id, revision=folder.name)

"""SigLIP2 text tower (`SiglipTextModel`): the text encoder of the text-conditional decoders (docs/conditional.md).

The SigLIP2 FixRes checkpoints (e.g. `google/siglip2-large-patch16-512`) are full text + vision
`SiglipModel` folders; the official wrapper (`SigLIP2Encoder` with `conditional=True` and
`label_type` "text" or "cls2text") loads `SiglipTextModel` and `AutoTokenizer` from the same folder
as the vision tower and encodes a batch of strings as

    tokenizer(texts, padding="max_length", max_length=64, truncation=True)  -> input_ids, attention_mask (B, 64)
    SiglipTextModel(input_ids, attention_mask) -> last_hidden_state (B, 64, C)   the fine text tokens
                                               -> pooler_output     (B, C)       head(last position), SigLIP's rule
    mask = attention_mask.bool()                                                 pad tokens are False

under its bf16 autocast, the outputs cast to float32. Here the tokenisation (`load_text_tokenizer`,
`tokenize`) is separate from the tower (`SiglipTextTower.forward(input_ids, attention_mask)`), so the
model works on ids and data pipelines own the strings. Frozen as every VFM, no gradients, always in eval
mode, local files only (docs/design.md, "Frozen networks").
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from transformers import PretrainedConfig, SiglipTextConfig, SiglipTextModel

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TEXT_MAX_LENGTH = 64  # the official tokenizer call (and SigLIP2's position table)

# Text tower presets: the HF `SiglipTextConfig` fields and the compute dtype (random init: tests, meta counts).
TEXT_PRESETS: dict[str, dict[str, Any]] = {
    # google/siglip2-large-patch16-512 text tower (Gemma tokenizer vocabulary).
    "siglip2-large-patch16-512": dict(
        hf=dict(
            vocab_size=256000,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            max_position_embeddings=64,
            hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=1e-6,
            projection_size=1024,
        ),
        compute_dtype="bfloat16",
    ),
    # Tiny tower of the `vfmvae_cond_text_tiny` fixture (35-word vocabulary, width 32).
    "debug-siglip-text": dict(
        hf=dict(
            vocab_size=35,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=64,
            hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=1e-6,
            projection_size=32,
            pad_token_id=0,
            bos_token_id=None,
            eos_token_id=2,
        ),
        compute_dtype="float32",
    ),
}


_ARCH_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "hidden_act",
    "layer_norm_eps",
    "attention_dropout",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "projection_size",
)


class TextCondition(NamedTuple):
    """What a text-conditional decoder reads: `tokens (B, L, C)` float32 fine text tokens (cross-attention
    context), `pooled (B, C)` float32 pooled embedding (concatenated to w), `mask (B, L)` bool, False at pad tokens."""

    tokens: torch.Tensor
    pooled: torch.Tensor
    mask: torch.Tensor


class SiglipTextTower(nn.Module):
    """Frozen SigLIP(2) text tower. `forward(input_ids (B, L) int, attention_mask (B, L)) -> TextCondition`."""

    def __init__(self, backbone: SiglipTextModel, compute_dtype: str = "float32", preset: str | None = None):
        super().__init__()
        if compute_dtype not in _DTYPES:
            raise ValueError(f"text tower compute_dtype must be one of {sorted(_DTYPES)}, got {compute_dtype!r}")
        cfg = backbone.config
        if cfg.projection_size != cfg.hidden_size:
            raise ValueError(
                f"text tower: projection_size {cfg.projection_size} != hidden_size {cfg.hidden_size}; the official "
                "decoder sizes both the pooled embedding and the text tokens by hidden_size"
            )
        self.backbone = backbone
        self.compute_dtype = compute_dtype
        self.preset = preset
        self.requires_grad_(False)
        self.eval()

    @property
    def hidden_size(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def max_length(self) -> int:
        return int(self.backbone.config.max_position_embeddings)

    def hf_config_dict(self) -> dict[str, Any]:
        """The HF text config as a JSON-able dict (recorded by exports, rebuilt by `from_config`)."""
        cfg = self.backbone.config
        return {k: getattr(cfg, k) for k in _ARCH_FIELDS}

    def train(self, mode: bool = True) -> SiglipTextTower:
        return super().train(False)  # frozen: dropout off whatever the parent does

    @classmethod
    def from_config(
        cls, hf_config: Mapping[str, Any] | PretrainedConfig, compute_dtype: str = "float32", preset: str | None = None
    ) -> SiglipTextTower:
        """Random init from a `SiglipTextConfig` dict; a full `siglip` config dict gives its `text_config`."""
        d = hf_config.to_dict() if isinstance(hf_config, PretrainedConfig) else dict(hf_config)
        if d.get("model_type") == "siglip" or "text_config" in d:
            d = dict(d["text_config"])
        d.pop("model_type", None)
        hf = SiglipTextConfig(**{k: v for k, v in d.items() if not k.startswith("_")})
        hf._attn_implementation = "sdpa"
        return cls(SiglipTextModel(hf), compute_dtype, preset)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, compute_dtype: str = "float32", preset: str | None = None):
        """Load a local `save_pretrained` folder: a full text + vision SigLIP(2) folder or a text-only one."""
        path = Path(os.path.expanduser(str(path)))
        if not path.is_dir():
            raise FileNotFoundError(
                f"text tower weights {str(path)!r}: not a local folder (a transformers SigLIP2 save_pretrained "
                "folder holding the text tower, e.g. google/siglip2-large-patch16-512)"
            )
        model, info = SiglipTextModel.from_pretrained(
            str(path), local_files_only=True, dtype=torch.float32, attn_implementation="sdpa", output_loading_info=True
        )
        missing = sorted(info.get("missing_keys", ()))
        if missing:
            raise ValueError(f"loading the text tower from {path}: missing keys {missing[:20]} (no text tower there?)")
        return cls(model, compute_dtype, preset)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.backbone.save_pretrained(str(path))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextCondition:
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"encode_text: input_ids and attention_mask must both be (B, L), got {tuple(input_ids.shape)} "
                f"and {tuple(attention_mask.shape)}"
            )
        if input_ids.shape[1] > self.max_length:
            raise ValueError(f"encode_text: {input_ids.shape[1]} tokens > the tower's {self.max_length} positions")
        vocab = int(self.backbone.config.vocab_size)
        if input_ids.device.type == "cpu" and input_ids.numel() and int(input_ids.max()) >= vocab:
            raise ValueError(f"encode_text: token id {int(input_ids.max())} >= the tower's vocabulary of {vocab}")
        dtype = _DTYPES[self.compute_dtype]
        device_type = input_ids.device.type
        # Own precision, independent of the ambient autocast (docs/design.md, "Precision policy").
        ctx = nullcontext()
        if device_type in ("cuda", "cpu"):
            ctx = torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32)
        with torch.no_grad(), ctx:
            out = self.backbone(input_ids=input_ids.long(), attention_mask=attention_mask.long(), return_dict=True)
        return TextCondition(out.last_hidden_state.float(), out.pooler_output.float(), attention_mask.bool())


def text_preset_for(hf_config: Mapping[str, Any], default: str = "siglip2-large-patch16-512") -> str:
    """The preset whose architecture a text config dict describes (`default` when none matches)."""
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    for name, preset in TEXT_PRESETS.items():
        if all(hf_config.get(k) == preset["hf"][k] for k in keys):
            return name
    return default


def build_text_tower(
    name: str, pretrained: str | os.PathLike | None = None, compute_dtype: str | None = None
) -> SiglipTextTower:
    """The text tower preset `name` (`TEXT_PRESETS`): random weights, or loaded from a local folder."""
    if name not in TEXT_PRESETS:
        raise KeyError(f"unknown text tower preset {name!r}; known: {sorted(TEXT_PRESETS)}")
    preset = TEXT_PRESETS[name]
    dtype = compute_dtype or preset["compute_dtype"]
    if pretrained is None:
        return SiglipTextTower.from_config(preset["hf"], dtype, preset=name)
    tower = SiglipTextTower.from_pretrained(pretrained, dtype, preset=name)
    expected = preset["hf"]
    got = tower.backbone.config
    diffs = {k: (v, getattr(got, k)) for k, v in expected.items() if k.endswith(("size", "layers", "heads"))}
    diffs = {k: v for k, v in diffs.items() if v[0] != v[1]}
    if diffs:
        raise ValueError(f"text tower at {pretrained} does not match preset {name!r}: {diffs}")
    return tower


def load_text_tokenizer(path: str | os.PathLike):
    """The tower's Hugging Face tokenizer from a local folder (the SigLIP2 folder holds it next to the weights)."""
    from transformers import AutoTokenizer

    path = Path(os.path.expanduser(str(path)))
    if not path.is_dir():
        raise FileNotFoundError(
            f"text tokenizer {str(path)!r} is not a local folder (a transformers tokenizer save_pretrained folder, "
            "e.g. the SigLIP2 model folder)"
        )
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def tokenize(
    tokenizer, texts: Sequence[str], max_length: int = TEXT_MAX_LENGTH, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask)`, both int64 `(B, max_length)`: padded to max_length and truncated (official)."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("tokenize: texts must be a list of strings")
    enc = tokenizer(
        list(texts),
        padding="max_length",
        max_length=max_length,
        truncation=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def write_word_level_tokenizer(folder: str | os.PathLike, texts: Sequence[str]) -> Path:
    """A tiny offline Hugging Face tokenizer for debug text towers: lower-cased words of `texts` split on
    whitespace, `</s>` appended, `<pad>` = 0, `<unk>` = 1, `</s>` = 2 (the `vfmvae_cond_text_tiny` layout);
    saved with `save_pretrained` into `folder` (loadable by `load_text_tokenizer`)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in normalizers.Lowercase().normalize_str(t).split()})
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "</s>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    folder = Path(folder)
    fast.save_pretrained(str(folder))
    return folder


def load_official_text_state_dict(
    tower: SiglipTextTower, state_dict: Mapping[str, torch.Tensor], prefix: str = "vfm_encoder.encoder.text_model."
) -> None:
    """Load the official text tower weights (`<prefix><SiglipTextModel key>`; transformers-4 checkpoints carry
    one more `text_model.`) strictly into `tower`."""
    expected = {k[len("backbone.") :] for k in tower.state_dict()}
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if rest not in expected and rest.startswith("text_model."):
            rest = rest[len("text_model.") :]
        if rest == "embeddings.position_ids":
            continue  # a non-persistent buffer some transformers versions saved
        if rest not in expected:
            raise KeyError(f"official text tower key {key!r} has no counterpart in SiglipTextModel")
        mapped[f"backbone.{rest}"] = value
    missing = sorted(f"backbone.{k}" for k in expected if f"backbone.{k}" not in mapped)
    if missing:
        raise KeyError(
            f"the official state dict lacks {len(missing)} text tower key(s) under {prefix!r}: {missing[:10]}"
        )
    tower.load_state_dict(mapped, strict=True)


__all__ = [
    "TEXT_MAX_LENGTH",
    "TEXT_PRESETS",
    "SiglipTextTower",
    "TextCondition",
    "build_text_tower",
    "load_official_text_state_dict",
    "load_text_tokenizer",
    "text_preset_for",
    "tokenize",
    "write_word_level_tokenizer",
]

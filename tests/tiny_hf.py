"""Tiny random-weight transformers models (Janus, Chameleon, Emu3) saved like the real checkpoints.

Weights use init std 0.2: with the usual 0.02 a random model repeats one code forever and every
speculative test would pass trivially. Tokenizers are small word-level vocabularies built offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ["a", "red", "blue", "cat", "dog", "on", "the", "grass", "sky", "of", "photo", "lowres"]


def word_tokenizer(vocab: dict[str, int], special: list[str]) -> object:
    """A whitespace word-level fast tokenizer over ``vocab`` (unknown words -> id 0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    inner = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": special})
    return tok


def _reinit(model: torch.nn.Module, std: float, seed: int, perturb: float = 0.0) -> None:
    """Matrices ~ N(0, std); ``perturb`` then adds N(0, perturb) noise from another seed, which
    makes a drafter that agrees with the seed's target often, not always."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
                param.add_(torch.randn(param.shape, generator=noise) * perturb)


def build_tiny_janus(
    directory: Path,
    seed: int = 0,
    perturb: float = 0.0,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    words: list[str] = WORDS,
) -> Path:
    """A 2-layer Janus with a 256-code VQ on an 8x8 grid (16x16 px), saved with its tokenizer.

    ``hidden_size``, ``layers`` and ``heads`` size the Llama decoder (and the image aligner and head, which
    meet it), as Janus-Pro-1B and -7B differ; ``words`` in another order make another tokenizer."""
    from transformers import GenerationConfig, JanusConfig, JanusForConditionalGeneration

    config = JanusConfig(
        text_config=dict(
            model_type="llama",
            vocab_size=64,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=512,
            pad_token_id=2,
            bos_token_id=1,
            eos_token_id=5,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=4,
            num_image_tokens=64,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            projection_dim=hidden_size,
            mlp_ratio=2,
        ),
        vq_config=dict(
            embed_dim=8,
            num_embeddings=256,
            latent_channels=32,
            base_channels=32,
            channel_multiplier=[1, 1],
            num_res_blocks=1,
            projection_dim=hidden_size,
            image_token_embed_dim=hidden_size,
        ),
        image_token_id=6,
    )
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config).eval()
    _reinit(model, 0.2, seed, perturb)
    model.generation_config = GenerationConfig(
        bos_token_id=1, pad_token_id=2, eos_token_id=5, generation_kwargs={"boi_token_id": 3}
    )
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    vocab = {"<unk>": 0, "<bos>": 1, "<pad>": 2, "<begin_of_image>": 3, "<eos>": 5, "<|User|>:": 7, "<|Assistant|>:": 8}
    vocab.update({w: 9 + i for i, w in enumerate(words)})
    word_tokenizer(vocab, ["<begin_of_image>"]).save_pretrained(directory)
    return directory


def image_token_name(code: int) -> str:
    """Chameleon's name for VQ code ``code``: its digits spelled with A-J between IMGIMG and Z."""
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


CHAMELEON_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<racm3:break>", "<eoss>", "<reserved08706>", "<reserved08799>"]
CHAMELEON_WORDS = ["Generate", "an", "image", "according", "to", "following", "prompt:"]


def build_tiny_chameleon(
    directory: Path,
    lumina: bool,
    seed: int = 0,
    codes: int = 64,
    perturb: float = 0.0,
    vqgan: bool = False,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    code_order_seed: int = 99,
) -> Path:
    """A 2-layer Chameleon with ``codes`` image tokens at shuffled BPE ids.

    ``lumina=True`` writes the checkpoint as Lumina-mGPT does: q/k-norm weights ``[1, head_dim]``,
    its training-only config keys, weights in two shards. ``vqgan`` adds a tiny ``vqgan.ckpt``.
    ``hidden_size``, ``layers`` and ``heads`` size the decoder; ``code_order_seed`` shuffles which BPE
    ids the codes are (another seed: another image-token map).
    """
    from safetensors.torch import load_file, save_file
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    names = CHAMELEON_SPECIAL + [f"<reserved{8800 + g:05d}>" for g in range(9)] + CHAMELEON_WORDS + WORDS
    vocab = {name: i for i, name in enumerate(names)}
    order = torch.randperm(codes, generator=torch.Generator().manual_seed(code_order_seed))
    for slot, code in enumerate(order.tolist()):
        vocab[image_token_name(code)] = len(names) + slot
    config = ChameleonConfig(
        vocab_size=128,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        vocabulary_map=vocab,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        vq_config=dict(
            embed_dim=8,
            num_embeddings=codes,
            base_channels=32,
            channel_multiplier=[1, 1],
            num_res_blocks=1,
            latent_channels=8,
            resolution=16,
            attn_resolutions=[],
        ),
    )
    torch.manual_seed(seed)
    model = ChameleonForConditionalGeneration(config).eval()
    _reinit(model, 0.2, seed, perturb)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "_norm." in name and "self_attn" in name:  # one LayerNorm per head, shared by all heads
                row = 1 + torch.randn_like(param[:1]) * 0.3 if name.endswith("weight") else param[:1] * 0.5
                param.copy_(row.expand_as(param))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    word_tokenizer({**{w: vocab[w] for w in names}}, []).save_pretrained(directory)
    if lumina:
        state = load_file(str(directory / "model.safetensors"))
        (directory / "model.safetensors").unlink()
        state = {k: (v[:1].contiguous() if "self_attn" in k and "_norm." in k else v) for k, v in state.items()}
        keys = sorted(state)
        for part, chunk in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
            save_file({k: state[k] for k in chunk}, str(directory / f"model-0000{part + 1}-of-00002.safetensors"))
        raw = json.loads((directory / "config.json").read_text())
        raw.update(z_loss_weight=1e-5, mask_image_logits=True)
        (directory / "config.json").write_text(json.dumps(raw))
    if vqgan:
        save_tiny_vqgan(directory, codes=codes)
    return directory


EMU3_SPECIAL = [
    "<unk>",
    "<|extra_203|>",
    "<pad>",
    "<|extra_204|>",
    "<|image start|>",
    "<|image end|>",
    "<|image token|>",
    "<|extra_200|>",
    "<|extra_201|>",
]


def build_tiny_emu3(
    directory: Path,
    seed: int = 0,
    perturb: float = 0.0,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
) -> Path:
    """A 2-layer GQA Emu3 with 64 visual tokens and a 2x-downsampling VQ (8x8 codes = 16x16 px);
    ``hidden_size``, ``layers``, ``heads`` and ``kv_heads`` size its decoder."""
    from transformers import Emu3Config, Emu3ForConditionalGeneration

    names = EMU3_SPECIAL + WORDS + ["lowres,", "8*8", "4*4"]
    vocab = {name: i for i, name in enumerate(names)}
    vocab.update({f"<|visual token {c:06d}|>": len(names) + c for c in range(64)})
    config = Emu3Config(
        text_config=dict(
            vocab_size=96,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=512,
            bos_token_id=1,
            pad_token_id=2,
            eos_token_id=3,
        ),
        vq_config=dict(
            codebook_size=64,
            embed_dim=8,
            latent_channels=8,
            base_channels=32,
            channel_multiplier=[1, 1],
            num_res_blocks=1,
            attn_resolutions=[],
            temporal_downsample_factor=4,
            hidden_size=32,
        ),
        vocabulary_map=vocab,
    )
    torch.manual_seed(seed)
    model = Emu3ForConditionalGeneration(config).eval()
    _reinit(model, 0.2, seed, perturb)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok = word_tokenizer({n: vocab[n] for n in names}, ["<|image start|>", "<|image token|>", "<|extra_200|>"])
    tok.save_pretrained(directory)
    return directory


def tiny_vqgan_state(
    codes: int = 64,
    dim: int = 8,
    z: int = 32,
    ch: int = 32,
    ch_mult: tuple[int, ...] = (1, 2),
    blocks: int = 1,
    attention_levels: tuple[int, ...] = (1,),
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A random Chameleon/taming VQGAN state dict written key by key from taming's layout (not from
    SpecAR's module), with encoder and loss entries as a Lightning checkpoint carries them."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, cin: int, cout: int, k: int) -> None:
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=gen) * (0.6 / (cin * k * k) ** 0.5)
        state[f"{name}.bias"] = torch.randn(cout, generator=gen) * 0.05

    def norm(name: str, c: int) -> None:
        state[f"{name}.weight"] = 1 + torch.randn(c, generator=gen) * 0.1
        state[f"{name}.bias"] = torch.randn(c, generator=gen) * 0.1

    def resblock(name: str, cin: int, cout: int) -> None:
        norm(f"{name}.norm1", cin), conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout), conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name: str, c: int) -> None:
        norm(f"{name}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    widths = [ch * m for m in ch_mult]
    top = len(widths) - 1
    state["quantize.embedding.weight"] = torch.randn(codes, dim, generator=gen)
    conv("post_quant_conv", dim, z, 1)
    conv("quant_conv", z, dim, 1)
    conv("encoder.conv_in", 3, ch, 3)
    state["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4, generator=gen)
    conv("decoder.conv_in", z, widths[top], 3)
    resblock("decoder.mid.block_1", widths[top], widths[top])
    attn("decoder.mid.attn_1", widths[top])
    resblock("decoder.mid.block_2", widths[top], widths[top])
    for level in range(top, -1, -1):
        cin = widths[min(level + 1, top)]
        for j in range(blocks + 1):
            resblock(f"decoder.up.{level}.block.{j}", cin if j == 0 else widths[level], widths[level])
            if level in attention_levels:
                attn(f"decoder.up.{level}.attn.{j}", widths[level])
        if level != 0:
            conv(f"decoder.up.{level}.upsample.conv", widths[level], widths[level], 3)
    norm("decoder.norm_out", widths[0])
    conv("decoder.conv_out", widths[0], 3, 3)
    return state


def save_tiny_vqgan(folder: Path, codes: int = 64, seed: int = 0) -> Path:
    """``vqgan.ckpt`` as Lightning saves it: ``{"state_dict": ..., "global_step": ...}``."""
    path = folder / "vqgan.ckpt"
    torch.save({"state_dict": tiny_vqgan_state(codes=codes, seed=seed), "global_step": 7}, path)
    return path


def build_tiny_t5(directory: Path, seed: int = 0) -> Path:
    """A 1-layer T5 encoder (d_model 32) with a word-level tokenizer that appends ``</s>`` like T5's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: 3 + i for i, w in enumerate(WORDS + CHAMELEON_WORDS)}}
    inner = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    inner.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    config = T5Config(
        vocab_size=32,
        d_model=32,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=1,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    model = T5EncoderModel(config).eval()
    _reinit(model, 0.3, seed)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_llamagen_t2i(directory: Path, slots: int = 12, seed: int = 0, **gpt_sizes: int) -> Path:
    """A LlamaGen t2i folder: official-layout tiny GPT, a tiny VQ, ``config.json`` and a tiny T5 in ``t5/``;
    ``gpt_sizes`` (``dim``, ``n_layer``, ``n_head``) size the GPT, as LlamaGen's B to XXL differ."""
    from tiny import TINY, save_official_pt, tiny_gpt

    from specar.checkpoints import save_safetensors
    from specar.models.vq16 import VQ16Config, VQ16Decoder

    directory.mkdir(parents=True, exist_ok=True)
    gpt = tiny_gpt(seed, model_type="t2i", caption_dim=32, cls_token_num=slots, **gpt_sizes)
    save_official_pt(gpt, directory / "t2i_tiny.pt")
    n_head = gpt_sizes.get("n_head", TINY["n_head"])
    (directory / "config.json").write_text(json.dumps({"n_head": n_head, "image_size": 128}))
    torch.manual_seed(0)
    vq = VQ16Decoder(
        VQ16Config(codebook_size=64, codebook_dim=8, z_channels=32, ch=32, ch_mult=(1, 2), num_res_blocks=1)
    )
    save_safetensors(vq.state_dict(), directory / "vq_tiny.safetensors")
    build_tiny_t5(directory / "t5")
    return directory

"""A GGUF sentencepiece vocabulary (Gemma 3's) keeps its word pieces and <bos> through conversion and reload."""

from __future__ import annotations

from pathlib import Path

PIECES = ["<pad>", "<eos>", "<bos>", "<unk>", "▁the", "the", "▁t", "he", "th", "▁", "t", "h", "e", "m"]


def write_sentencepiece_gguf(path: Path) -> Path:
    """A metadata-only gemma3 GGUF whose vocabulary, like Gemma 3's, has pieces and scores but no merges."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(1)
    writer.add_head_count_kv(1)
    writer.add_key_length(8)
    writer.add_value_length(8)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_sliding_window(8)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(PIECES)
    writer.add_token_scores([-1000.0] * 4 + [-float(rank) for rank in range(len(PIECES) - 4)])
    writer.add_token_types([3] * 4 + [1] * (len(PIECES) - 4))
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_sentencepiece_gguf_tokenizer_keeps_its_pieces_after_save_and_reload(tmp_path):
    from transformers import AutoTokenizer

    from zephyr.modeling import load_tokenizer, repair_gguf_tokenizer

    path = write_sentencepiece_gguf(tmp_path / "sp.gguf")
    converted = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    converted.save_pretrained(tmp_path / "unrepaired")
    # The failure being repaired: reloaded without merges, every word falls apart into characters.
    assert load_tokenizer(str(tmp_path / "unrepaired")).tokenize("the theme") == ["t", "h", "e", "▁", "t", "h", "e",
                                                                                   "m", "e"]
    repair_gguf_tokenizer(converted, path)
    converted.save_pretrained(tmp_path / "repaired")
    reloaded = load_tokenizer(str(tmp_path / "repaired"))
    ids = reloaded("the theme")["input_ids"]
    assert reloaded.convert_ids_to_tokens(ids) == ["<bos>", "the", "▁the", "m", "e"]
    assert reloaded.decode(ids, skip_special_tokens=True) == "the theme"

"""The benchmark scripts' shared pieces (the timings themselves are never asserted)."""

import torch

from benchmarks import results
from benchmarks.throughput import read_idx


def test_write_section_replaces_its_own_section_and_keeps_the_others(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(results, "RESULTS", tmp_path / "RESULTS.md")
    results.write_section("A", ["first"])
    results.write_section("B", ["second"])
    results.write_section("A", ["third"])
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith("# Benchmarks")
    assert "third" in text and "second" in text and "first" not in text
    assert text.index("## A") < text.index("## B") and text.count("## A") == 1


def test_table_formats_numbers():
    assert results.table(["x", "y"], [["a", 1234.5678]]) == [
        "| x | y |",
        "|---|---|",
        "| a | 1.23e+03 |",
    ]


def test_read_idx_reads_mnist_images(tmp_path):
    pixels = torch.arange(2 * 3 * 4, dtype=torch.uint8)
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(
        b"\x00\x00\x08\x03"
        + (2).to_bytes(4, "big")
        + (3).to_bytes(4, "big")
        + (4).to_bytes(4, "big")
        + bytes(pixels.tolist())
    )
    x = read_idx(path)
    assert x.shape == (2, 1, 3, 4) and torch.allclose(x.flatten(), pixels.float() / 255)

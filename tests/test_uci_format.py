from __future__ import annotations

import io

import numpy as np

from hpo.data import _uci_format


def test_format_matches_printf_five_decimals() -> None:
    rng = np.random.default_rng(0)
    feats = np.concatenate(
        [rng.normal(0, 1, (50, 30)), rng.normal(0, 5000, (50, 30)), rng.uniform(-1e-4, 1e-4, (50, 30))],
        axis=1,
    )
    feats[0, :4] = [0.0, -0.000004, 99999.999996, -12.5]
    years = rng.integers(1922, 2012, 50)
    text = _uci_format.format_block(years, feats).decode()
    expected = "".join(
        ",".join([str(y), *[f"{v:.5f}" for v in np.round(row, 5) + 0.0]]) + "\n"
        for y, row in zip(years, feats, strict=True)
    )
    assert text == expected.replace("-0.00000", "0.00000")


def test_write_rows_in_blocks_equals_one_block() -> None:
    rng = np.random.default_rng(1)
    feats = rng.normal(0, 100, (1000, 90))
    years = rng.integers(1922, 2012, 1000)
    out = io.BytesIO()
    _uci_format.write_rows(out, years, feats, block_rows=77)
    assert out.getvalue() == _uci_format.format_block(years, feats)
    parsed = np.loadtxt(io.StringIO(out.getvalue().decode()), delimiter=",")
    assert np.array_equal(parsed[:, 0], years)
    assert np.abs(parsed[:, 1:] - feats).max() <= 5e-6 + 1e-9

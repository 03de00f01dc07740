"""Figures: integer layer/head/position ticks, labelled colour bars, every example reachable
in token heatmaps (slider pages), target words in row labels, token strings escaped."""

from __future__ import annotations

import pytest
import torch

from mechattr.report import figures


def ints(values):
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


@pytest.mark.parametrize("n_layers,n_heads", [(1, 1), (2, 4), (12, 12)])
def test_layer_head_heatmap_has_integer_ticks_and_a_titled_colorbar(n_layers, n_heads):
    fig = figures.layer_head_heatmap(torch.randn(n_layers, n_heads), title="ablation", zlabel="Δ logit")
    assert fig.layout.xaxis.tickvals == tuple(range(n_heads)) and ints(fig.layout.xaxis.tickvals)
    assert fig.layout.yaxis.tickvals == tuple(range(n_layers)) and ints(fig.layout.yaxis.tickvals)
    assert fig.layout.xaxis.title.text == "head" and fig.layout.yaxis.title.text == "layer"
    assert fig.data[0].colorbar.title.text == "Δ logit"


def test_layer_head_heatmap_handles_nan_and_zero_grids():
    g = torch.full((2, 3), float("nan"))
    g[1, 2] = -4.0
    fig = figures.layer_head_heatmap(g)
    assert fig.data[0].zmin == -4.0 and fig.data[0].zmax == 4.0  # NaN (untested) cells do not poison the scale
    assert figures.layer_head_heatmap(torch.zeros(2, 2)).data[0].zmax > 0


def test_layer_pos_heatmap_integer_ticks_token_labels_and_colorbar():
    toks = ["<bos>", "a", "a", "b"]
    fig = figures.layer_pos_heatmap(torch.randn(3, 4), toks, row_names=["resid_pre0", "resid_pre1", "resid_final"], zlabel="attribution (logit)")
    x = fig.layout.xaxis
    assert ints(x.tickvals) and x.tickvals == (0, 1, 2, 3)
    assert len(set(x.ticktext)) == 4 and x.ticktext[0].startswith("&lt;bos&gt;")  # repeated tokens kept apart, escaped
    assert fig.layout.yaxis.ticktext == ("resid_pre0", "resid_pre1", "resid_final") and ints(fig.layout.yaxis.tickvals)
    assert fig.data[0].colorbar.title.text == "attribution (logit)"


@pytest.mark.parametrize("n_rows,page", [(1, 8), (8, 8), (9, 8), (23, 5)])
def test_token_heatmap_pages_reach_every_row_once(n_rows, page):
    strs = [[f"tok{r}_{j}" for j in range(6)] for r in range(n_rows)]
    fig = figures.token_heatmap(torch.randn(n_rows, 6), strs, page_rows=page, zlabel="IG (logit)")
    seen = [y for tr in fig.data for y in tr.y]
    assert sorted(seen) == sorted(f"ex {i}" for i in range(n_rows)) and len(seen) == n_rows
    texts = [row[0] for tr in fig.data for row in tr.text]
    assert texts == [f"tok{r}_0" for r in range(n_rows)]  # each page shows its own rows' tokens
    pages = -(-n_rows // page)
    assert len(fig.data) == pages and [tr.visible for tr in fig.data] == [True] + [False] * (pages - 1)
    if pages > 1:  # one slider step per page, each showing exactly that page
        steps = fig.layout.sliders[0].steps
        assert [s.args[0]["visible"] for s in steps] == [[j == k for j in range(pages)] for k in range(pages)]
    assert len({(tr.zmin, tr.zmax) for tr in fig.data}) == 1  # one colour scale across pages
    assert all(tr.colorbar.title.text == "IG (logit)" for tr in fig.data)
    assert ints(fig.layout.xaxis.tickvals)


def test_token_heatmap_shows_target_words_escaped_and_wide_rows_stay_readable():
    strs = [["<bos>", "When", "Mary"] + ["x"] * 37] * 2
    fig = figures.token_heatmap(torch.randn(2, 40), strs, target_words=["Mary", "<b>John</b>"])
    assert list(fig.data[0].y) == ["ex 0 → Mary", "ex 1 → &lt;b&gt;John&lt;/b&gt;"]
    assert fig.data[0].text[0][0] == "&lt;bos&gt;"
    assert fig.layout.width >= 40 * figures.CELL_PX  # cells keep their width; the figure scrolls
    assert figures.token_heatmap(torch.randn(1, figures.WIDE_POS), [["a"] * figures.WIDE_POS]).layout.width is None  # fits the page
    with pytest.raises(ValueError, match="target_words has 1 entries for 2 rows"):
        figures.token_heatmap(torch.randn(2, 40), strs, target_words=["Mary"])
    with pytest.raises(ValueError, match="page_rows"):
        figures.token_heatmap(torch.randn(2, 40), strs, page_rows=0)

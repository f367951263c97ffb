"""Edit analyser on constructed images whose right answers are known."""
import math

import numpy as np
import pytest
from scipy import ndimage

from msbd.toy.analyser import (
    analyse_edit,
    classify_shape,
    colour_classes,
    components,
    edge_width,
    psnr_outside,
    seam_strength,
)
from msbd.toy.scenes import (
    COLOURS,
    PALETTE,
    Background,
    EditTask,
    MaskRegion,
    Scene,
    SceneObject,
    random_edit_task,
    random_scene,
    render,
    render_mask,
)
from msbd.toy.shapes import SHAPES

FLAT = Background(noise_amplitude=0.0, grain_amplitude=0.0)
GAUSS_10_90 = 2 * 1.2815516  # 10-90 % width of a Gaussian-blurred step, in sigmas


def _task(objects_in_edit, mask=MaskRegion("rect", 0.5, 0.5, 0.35, 0.35), source=Scene(background=FLAT)):
    """A task asking for the first object; the 'edited' image shows all of `objects_in_edit`."""
    task = EditTask(source=source, mask=mask, obj=objects_in_edit[0], prompt=objects_in_edit[0].noun)
    edited = Scene(aspect=source.aspect, background=source.background, objects=source.objects + tuple(objects_in_edit))
    return task, edited


def test_palette_colours_are_classified_and_backgrounds_are_not():
    swatch = np.array([[PALETTE[c] for c in COLOURS]], dtype=np.uint8)
    assert colour_classes(swatch).tolist() == [list(range(len(COLOURS)))]
    for seed in range(10):
        assert (colour_classes(render(random_scene(seed, n_objects=0), 64)) == -1).all()


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_count_of_red_circles(n):
    circles = [SceneObject("circle", "red", 0.3 + 0.2 * i, 0.5, 0.16) for i in range(n)]
    wanted = SceneObject("circle", "red", 0.5, 0.5, 0.16)
    task, edited = _task([wanted])
    image = render(Scene(background=FLAT, objects=tuple(circles)), 128)
    report = analyse_edit(image, render_mask(task, 128), render(task.source, 128), task)
    assert report.count == n
    assert report.colour_ok == (n > 0)


def test_tiny_specks_and_other_colours_do_not_count():
    red, blue = SceneObject("square", "red", 0.5, 0.5, 0.3), SceneObject("square", "blue", 0.3, 0.3, 0.2)
    speck = SceneObject("circle", "red", 0.75, 0.75, 0.02)  # far below 10 % of the expected area
    task, edited = _task([red, blue, speck])
    image = render(edited, 256)
    report = analyse_edit(image, render_mask(task, 256), render(task.source, 256), task)
    assert report.count == 1 and report.colour_ok and report.shape == "square"


def test_ground_truth_edit_is_perfect_and_source_fails():
    for seed in range(3):
        task = random_edit_task(seed)
        source, truth, mask = render(task.source, 128), render(task.target, 128), render_mask(task, 128)
        good = analyse_edit(truth, mask, source, task)
        assert (good.count, good.colour_ok, good.shape_ok) == (1, True, True)
        assert good.edge_ratio == pytest.approx(1.0)
        assert good.seam == 1.0 and good.seam_ref == 1.0 and good.psnr_outside == math.inf
        bad = analyse_edit(source, mask, source, task)
        assert (bad.count, bad.colour_ok, bad.shape) == (0, False, None)
        assert math.isnan(bad.edge_ratio)


def test_repeated_object_is_counted():
    task = random_edit_task(4, n_objects=0)
    o, r = task.obj, task.mask.inradius
    twins = [SceneObject(o.shape, o.colour, o.x + dx * r / 2, o.y, o.size / 3, o.rotation) for dx in (-1, 1)]
    edited = Scene(background=task.source.background, objects=tuple(twins))
    report = analyse_edit(render(edited, 128), render_mask(task, 128), render(task.source, 128), task)
    assert report.count == 2 and report.colour_ok


def _disc(size: int = 160) -> np.ndarray:
    scene = Scene(background=FLAT, objects=(SceneObject("circle", "red", 0.5, 0.5, 0.6),))
    return render(scene, size, as_float=True)


def test_edge_width_of_gaussian_blur():
    sharp = _disc()
    to_u8 = lambda x: np.rint(x * 255).astype(np.uint8)  # noqa: E731
    base = edge_width(to_u8(sharp), colour_classes(to_u8(sharp)) == 0)
    assert 0.8 < base < 1.8  # the renderer's one-pixel ramp, seen through bilinear profile sampling
    previous = base
    for sigma in (1.5, 3.0):
        blurred = to_u8(ndimage.gaussian_filter(sharp, (sigma, sigma, 0)))
        obj = components(colour_classes(blurred) == 0, 100)[0]
        width = edge_width(blurred, obj)
        # Widths of independent blurs add in quadrature; the blur alone gives 2.563 sigma.
        assert width == pytest.approx(math.hypot(GAUSS_10_90 * sigma, base), rel=0.05)
        assert width > previous
        previous = width


def test_blurred_edit_has_wider_edges_than_ground_truth():
    task = random_edit_task(2)
    truth, mask = render(task.target, 128, as_float=True), render_mask(task, 128)
    blurred = np.where(mask[..., None], ndimage.gaussian_filter(truth, (2, 2, 0)), truth)
    report = analyse_edit(np.rint(blurred * 255).astype(np.uint8), mask, render(task.source, 128), task)
    assert report.count == 1
    assert report.edge_ratio > 2


def test_seam_untouched_is_one_and_hard_paste_is_larger():
    scene = random_scene(8, n_objects=0)
    source = render(scene, 128)
    mask = render_mask(MaskRegion("ellipse", 0.5, 0.5, 0.3, 0.2), 128)
    assert seam_strength(source, source, mask, 2.0) == 1.0
    pasted = np.where(mask[..., None], np.clip(source.astype(int) + 30, 0, 255), source).astype(np.uint8)
    assert seam_strength(pasted, source, mask, 2.0) > 1.5
    brighter = np.where(mask[..., None], np.clip(source.astype(int) + 60, 0, 255), source).astype(np.uint8)
    assert seam_strength(brighter, source, mask, 2.0) > seam_strength(pasted, source, mask, 2.0)
    inside_only = np.where(mask[..., None], 255 - source, source)  # changes inside, contour step too
    assert seam_strength(inside_only, source, mask, 2.0) > seam_strength(pasted, source, mask, 2.0)
    with pytest.raises(ValueError, match="contour"):
        seam_strength(source, source, np.zeros_like(mask), 2.0)


def test_seam_away_from_the_object_ignores_an_object_that_fills_the_mask():
    """An object reaching the contour draws its outline along it: `seam` counts it, `seam_bg` (the band minus the
    object's neighbourhood) does not, and still sees a pasted brightness step elsewhere on the contour."""
    source = render(random_scene(8, n_objects=0), 128)
    mask = render_mask(MaskRegion("ellipse", 0.5, 0.5, 0.3, 0.2), 128)
    obj = mask & (np.arange(128)[None, :] < 64)                      # the left half of the mask: an object
    edited = np.where(obj[..., None], np.array(PALETTE["red"], np.uint8), source).astype(np.uint8)
    red = colour_classes(edited) == COLOURS.index("red")
    assert seam_strength(edited, source, mask, 2.0) > 2                # the outline counts as a seam
    assert seam_strength(edited, source, mask, 2.0, red) == pytest.approx(1.0, abs=0.05)
    step = np.where((mask & ~obj)[..., None], np.clip(edited.astype(int) + 40, 0, 255), edited).astype(np.uint8)
    assert seam_strength(step, source, mask, 2.0, red) > 1.5          # a real seam on the object-free side
    assert math.isnan(seam_strength(edited, source, mask, 2.0, mask | ~mask))   # nothing left of the band


def test_psnr_outside():
    rng = np.random.default_rng(0)
    source = np.full((200, 200, 3), 128, dtype=np.uint8)
    mask = np.zeros((200, 200), dtype=bool)
    mask[50:150, 50:150] = True
    changed_inside = source.copy()
    changed_inside[mask] = 0
    assert psnr_outside(changed_inside, source, mask) == math.inf
    sigma = 5.0
    noisy = np.clip(np.rint(source + rng.normal(0, sigma, source.shape)), 0, 255).astype(np.uint8)
    expected = 10 * math.log10(255**2 / (sigma**2 + 1 / 12))  # rounding adds a uniform 1/12 variance
    assert psnr_outside(noisy, source, mask) == pytest.approx(expected, abs=0.15)
    assert psnr_outside(noisy, source, mask, rows_per_chunk=7) == pytest.approx(psnr_outside(noisy, source, mask))


def test_shape_classifier_on_rotated_renders():
    rng = np.random.default_rng(1)
    correct = total = 0
    for size in (64, 128, 512):
        for shape in SHAPES:
            for _ in range(4):
                diameter = float(rng.uniform(0.3, 0.45))
                obj = SceneObject(shape, "green", 0.5, 0.5, diameter, float(rng.uniform(0, 2 * math.pi)))
                scene = Scene(background=random_scene(int(rng.integers(1000))).background, objects=(obj,))
                half = math.ceil(diameter / 2 * size) + 3
                image = render(scene, size, region=(size // 2 - half, size // 2 - half, 2 * half, 2 * half))
                found = components(colour_classes(image) == COLOURS.index("green"), 9)
                correct += classify_shape(found[0])[0] == shape
                total += 1
    assert correct / total >= 0.95


def test_analyser_rejects_bad_inputs():
    task = random_edit_task(0)
    image, mask = render(task.source, 64), render_mask(task, 64)
    with pytest.raises(ValueError, match="uint8"):
        analyse_edit(image.astype(np.float32), mask, image, task)
    with pytest.raises(ValueError, match="mask"):
        analyse_edit(image, mask[:-1], image, task)
    with pytest.raises(ValueError, match="empty"):
        analyse_edit(image, np.zeros_like(mask), image, task)


def test_halo_scores_a_flat_lighter_ring_and_not_an_invisible_edit():
    from msbd.toy.analyser import halo
    rng = np.random.default_rng(0)
    source = np.clip(100 + rng.normal(0, 20, (128, 128, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:128, :128]
    mask = (yy - 64) ** 2 + (xx - 64) ** 2 < 40 ** 2
    colour, texture = halo(source, source, mask, 6)        # same texture either side: no halo
    assert colour < 3 and 0.8 < texture < 1.25
    edited = source.copy()
    edited[mask] = 160                                     # the repainted background: lighter and flat
    colour, texture = halo(edited, source, mask, 6)
    assert abs(colour - 60 * np.sqrt(3)) < 4 and texture < 0.05
    obj = (yy - 64) ** 2 + (xx - 64) ** 2 < 30 ** 2        # excluding the object leaves the ring's measure alone
    assert halo(edited, source, mask, 6, exclude=obj) == (colour, texture)


def _tiled_canvas(seed: int = 0):
    """A 256 px textured grey canvas, a mask over most of it and the grid tiles of the pipeline's lattice."""
    from msbd.stitch import grid_tiles
    rng = np.random.default_rng(seed)
    base = 110 + ndimage.gaussian_filter(rng.normal(0, 25, (256, 256)), 1.0)
    yy, xx = np.mgrid[:256, :256]
    mask = (np.abs(yy - 128) < 120) & (np.abs(xx - 128) < 120)
    tiles = [tuple(b) for b in grid_tiles(256, 256, 96, 32, min_tile=64)]
    return base, mask, tiles


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(grey, 0, 255)[..., None], 3, axis=-1).astype(np.uint8)


def test_tile_steps_see_tiles_of_their_own_brightness_and_texture():
    from msbd.toy.analyser import tile_cells, tile_steps
    base, mask, tiles = _tiled_canvas()
    step, tex, pairs = tile_steps(_rgb(base), mask, tiles)              # one texture throughout: no grid
    step_c, tex_c, _ = tile_steps(_rgb(base), mask, tiles, control=True)
    assert pairs >= 12 and step < 3 and step_c < 3 and tex < 0.4 and tex_c < 0.4
    cells = tile_cells(tiles, mask.shape)
    offsets = np.random.default_rng(1).choice([-20.0, 20.0], size=cells.max() + 1)
    step, _, _ = tile_steps(_rgb(base + offsets[cells]), mask, tiles)     # every tile its own brightness
    step_c, _, _ = tile_steps(_rgb(base + offsets[cells]), mask, tiles, control=True)
    assert step > 12 and step_c < 3
    flat = cells % 2 == 0                                                 # every other tile smooth
    smooth = np.where(flat, ndimage.gaussian_filter(base, 4), base)
    _, tex, _ = tile_steps(_rgb(smooth), mask, tiles)
    _, tex_c, _ = tile_steps(_rgb(smooth), mask, tiles, control=True)
    assert tex > 2 and tex_c < 1.0                                       # smooth vs textured: log2 of ~13x
    assert tile_steps(_rgb(base), np.zeros_like(mask), tiles)[2] == 0     # nothing masked: nothing measured


def test_specks_per_tile_counts_blobs_and_the_cells_they_sit_in():
    from msbd.toy.analyser import specks_per_tile, tile_cells
    base, mask, tiles = _tiled_canvas()
    red = COLOURS.index("red")
    image = _rgb(base)
    cells = tile_cells(tiles, mask.shape)
    assert specks_per_tile(image, mask, tiles, red) == (0, 0, len(np.unique(cells[mask])))
    image[100:160, 100:160] = PALETTE["red"]                              # one object across several tiles
    blobs, busy, n_cells = specks_per_tile(image, mask, tiles, red)
    assert (blobs, busy) == (1, 1) and n_cells == len(np.unique(cells[mask])) == 16
    dots = [(30, 30), (30, 200), (200, 30), (220, 220)]                   # a speck in four other tiles
    for r, c in dots:
        image[r:r + 3, c:c + 3] = PALETTE["red"]
    image[60:62, 220:221] = PALETTE["red"]                                # 2 px: under the speck size
    image[5:8, 245:250] = PALETTE["red"]                                  # outside the mask
    blobs, busy, _ = specks_per_tile(image, mask, tiles, red, min_px=3)
    assert blobs == 5 and busy == 1 + len({cells[r, c] for r, c in dots})
    image[200:203, 60:63] = PALETTE["blue"]                               # another colour does not count
    assert specks_per_tile(image, mask, tiles, red, min_px=3)[0] == 5


def test_analyse_edit_reports_tile_measures_only_with_tiles():
    task = random_edit_task(5)
    source, mask = render(task.source, 256), render_mask(task, 256)
    edited = np.asarray(render(task.target, 256))
    plain = analyse_edit(edited, mask, np.asarray(source), task)
    assert math.isnan(plain.tile_step) and plain.blobs == -1
    from msbd.stitch import grid_tiles
    tiles = [tuple(b) for b in grid_tiles(256, 256, 96, 32, min_tile=64)]
    report = analyse_edit(edited, mask, np.asarray(source), task, tiles=tiles)
    assert report.blobs == report.count == 1 and report.blob_cells == 1 and report.mask_cells >= 1
    assert math.isfinite(report.tile_step) and math.isfinite(report.tile_step_ctrl)
    from msbd.toy.analyser import tile_cells  # the same edit with a tile grid on top
    offsets = np.random.default_rng(2).choice([-25, 25], size=len(tiles))[tile_cells(tiles, mask.shape)]
    gridded = np.where(mask[..., None], np.clip(edited + offsets[..., None], 0, 255), edited).astype(np.uint8)
    worse = analyse_edit(gridded, mask, np.asarray(source), task, tiles=tiles)
    assert worse.tile_step > report.tile_step + 10
    assert abs(worse.tile_step_ctrl - report.tile_step_ctrl) < 3

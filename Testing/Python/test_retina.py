"""The retinal family: 2D global models (homography, quadratic), keypoint registration of fundus photographs
(``retina-fundus``, ``retina-multimodal``), the colour channel, the warped colour output and the FIRE protocol.

Real data: the scikit-image fundus photograph (from its wheel, so these run on a fresh clone) under known
quadratic warps, and the FIRE category-P pairs of ../shared/data/retina/fire with their control points.
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import DeepRegistrationLib as dr
from conftest import DATA, ROOT, data_file, shared_only
from DeepRegistrationLib.intensity import normalise_unit_range
from DeepRegistrationLib.io.transforms import model_parameters_path, read_model_parameters
from DeepRegistrationLib.metrics.fire import fire_summary, pair_error, read_fire_points, success_curve
from DeepRegistrationLib.registration import RegistrationConfig, load_preset, register
from DeepRegistrationLib.registration.inputs import read_pair_inputs
from DeepRegistrationLib.transforms.polynomial import (MODELS, HomographyTransform, QuadraticTransform, fit_homography,
                                                       fit_quadratic, polynomial_from_dict)
from test_cli import _error_line, deepreg

FIRE = DATA / "retina" / "fire"


def _true_quadratic(size: int, pixel_mm: float = 1.0) -> QuadraticTransform:
    """A fixed -> moving map (mm) like a second visit of a ``size`` pixel photograph: 7 degrees, a shift of
    (60, -45) px, 1.03 zoom and a curvature that bends the field of view's edge by about 6 px."""
    c = np.array([size / 2, size / 2]) * pixel_mm
    s = size / 2 * pixel_mm
    angle = np.deg2rad(7)
    rot = 1.03 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * s
    coefficients = np.zeros((2, 6))
    coefficients[:, 0] = c + np.array([60, -45]) * pixel_mm
    coefficients[:, 1:3] = rot
    coefficients[:, 3:] = np.array([[4.0, -2.0, 3.0], [-3.0, 2.5, 3.5]]) * pixel_mm
    return QuadraticTransform(coefficients, c, s)


@pytest.fixture(scope="module")
def photo_pair(tmp_path_factory):
    """The scikit-image fundus photograph and a second 'visit': warped by a known quadratic, darker, with a
    gamma change and noise; both written as 8-bit RGB PNG files. The JPEG states a resolution (0.169 mm pixels),
    which the files keep: pixel settings and FIRE points must go through the grids."""
    folder = tmp_path_factory.mktemp("retina")
    fixed = dr.read_image(data_file("retina/skimage_retina.jpg"))
    assert fixed.num_channels == 3 and fixed.dim == 2
    assert fixed.grid.spacing[0] != 1.0
    truth = _true_quadratic(fixed.grid.size[0], fixed.grid.spacing[0])
    moving = dr.warp_image(fixed.float(), truth.inverse(), fixed.grid, "linear")  # moving(T(x)) = fixed(x)
    rng = np.random.default_rng(0)
    data = 255 * (moving.data.numpy() / 255) ** 1.3 * 0.85 + rng.normal(0, 3, moving.data.shape)
    moving = moving.with_data(torch.from_numpy(np.clip(np.round(data), 0, 255).astype(np.uint8)))
    paths = {"fixed": folder / "fixed.png", "moving": folder / "moving.png"}
    fixed.write(paths["fixed"])
    moving.write(paths["moving"])
    return paths, truth, fixed.grid


def _fov_points(grid, truth, count: int = 400) -> np.ndarray:
    """Fixed points (mm) inside the photograph's circle whose image lands inside the moving image."""
    rng = np.random.default_rng(1)
    size = grid.size[0]
    index = rng.uniform(0, size - 1, (count * 4, 2))
    inside = np.linalg.norm(index - size / 2, axis=1) < 0.42 * size
    p = grid.index_to_physical(index)
    q = grid.physical_to_index(truth.map_points(p))
    inside &= (q > 0).all(1) & (q < size - 1).all(1)
    return p[inside][:count]


def _error_px(transform, truth, points, grid) -> np.ndarray:
    return np.linalg.norm(transform.map_points(points) - truth.map_points(points), axis=1) / grid.spacing[0]


# ---------------------------------------------------------------------------------------------- models
def test_homography_and_quadratic_fits_match_opencv_and_invert():
    import cv2

    rng = np.random.default_rng(0)
    fixed = rng.uniform(0, 2900, (60, 2))
    h = np.array([[1.02, 0.03, 500], [-0.02, 0.99, -30], [1e-5, -2e-5, 1]])
    moving = cv2.perspectiveTransform(fixed[None], h)[0]
    fitted = fit_homography(fixed, moving)
    reference, _ = cv2.findHomography(fixed, moving, 0)
    assert np.allclose(fitted.matrix.numpy(), reference / reference[2, 2], rtol=1e-6, atol=1e-9)
    assert np.abs(fitted.inverse().map_points(moving) - fixed).max() < 1e-6
    truth = _true_quadratic(2912)
    quad = fit_quadratic(fixed, truth.map_points(fixed))
    assert np.abs(quad.map_points(fixed) - truth.map_points(fixed)).max() < 1e-6
    assert np.abs(quad.inverse().map_points(quad.map_points(fixed)) - fixed).max() < 1e-6
    for model in (fitted, quad, quad.inverse()):  # exact JSON round trip
        again = polynomial_from_dict(json.loads(json.dumps(model.parameters_dict())))
        assert np.abs(again.map_points(fixed[:5]) - model.map_points(fixed[:5])).max() < 1e-9
    with pytest.raises(dr.InputError, match="at least 6 correspondences"):
        fit_quadratic(fixed[:5], moving[:5])
    with pytest.raises(dr.InputError, match="collinear"):
        line = np.c_[np.arange(10.0), 2 * np.arange(10.0)]
        fit_homography(line, line)
    with pytest.raises(dr.InputError, match="3x3"):
        HomographyTransform(np.eye(2))


def test_light_name_tables_match_the_libraries():
    """Preset parsing uses copies of these names so that it does not import torch; the copies must agree."""
    from DeepRegistrationLib.image import COLOUR_CHANNELS
    from DeepRegistrationLib.methods.retina.fundus_names import TRANSFORM_MODELS
    from DeepRegistrationLib.registration.config import COLOUR_CHANNELS as CONFIG_CHANNELS

    assert TRANSFORM_MODELS == MODELS and CONFIG_CHANNELS == COLOUR_CHANNELS


def test_model_written_as_itk_field_and_json(tmp_path):
    """No ITK type holds a quadratic: the .h5 holds it sampled (SimpleITK reads it back), the .model.json the
    exact coefficients."""
    grid = dr.Grid((400, 300), spacing=(1.0, 1.0))
    truth = _true_quadratic(300)
    truth.domain = grid
    dr.write_transform(truth, tmp_path / "t.h5")
    tx = sitk.ReadTransform(str(tmp_path / "t.h5"))
    points = np.random.default_rng(0).uniform(10, 290, (50, 2))
    itk = np.array([tx.TransformPoint(p.tolist()) for p in points])
    assert np.abs(itk - truth.map_points(points)).max() < 0.01
    exact = read_model_parameters(model_parameters_path(tmp_path / "t.h5"))
    assert np.abs(exact.map_points(points) - truth.map_points(points)).max() < 1e-9
    (tmp_path / "bad.json").write_text("{\"model\": \"cubic\"}")
    with pytest.raises(dr.InputError, match="bad.json: unknown 2D model 'cubic'"):
        read_model_parameters(tmp_path / "bad.json")


# ---------------------------------------------------------------------------------------------- registration
def test_colour_channel_is_chosen_by_the_preset(photo_pair):
    paths, _, _ = photo_pair
    green = read_pair_inputs(paths["fixed"], paths["moving"], channel="green")
    luminance = read_pair_inputs(paths["fixed"], paths["moving"])
    colour = dr.read_image(paths["fixed"])
    assert torch.equal(green.fixed.data[0], colour.data[1].float())
    assert not torch.equal(luminance.fixed.data, green.fixed.data)
    assert green.moving_colour is not None and green.moving_colour.num_channels == 3
    assert any("green channel" in note for note in green.notes)
    assert load_preset("retina-fundus").channel == "green"
    with pytest.raises(dr.InputError, match="channel must be one of"):
        load_preset("retina-fundus", ["channel=purple"])


def test_retina_fundus_recovers_a_known_quadratic(photo_pair):
    paths, truth, grid = photo_pair
    pair = read_pair_inputs(paths["fixed"], paths["moving"], channel="green")
    result = register(pair.fixed, pair.moving, load_preset("retina-fundus"))
    points = _fov_points(grid, truth)
    error = _error_px(result.transform, truth, points, grid)
    before = np.linalg.norm(points - truth.map_points(points), axis=1) / grid.spacing[0]
    figures = result.figures["stages"][0]
    assert before.mean() > 50 and error.mean() < 1.0 and error.max() < 3.0, (error.mean(), error.max(), figures)
    assert isinstance(result.transform, QuadraticTransform) and result.transform.domain is not None
    assert figures["guided_inliers"] >= figures["ransac_inliers"] > 50
    # homography and affine models from the same keypoints: worse (the truth is curved), but not lost
    for model in ("homography", "affine"):
        other = register(pair.fixed, pair.moving, load_preset("retina-fundus", [f"stages.0.transform={model}"]))
        other_error = _error_px(other.transform, truth, points, grid)
        assert error.mean() < other_error.mean() < 15, (model, other_error.mean())


def test_oblique_anisotropic_2d_grids(photo_pair):
    """The same photographs on rotated, anisotropic 2D grids (as a scanner or a DICOM secondary capture may state):
    the stage works in each image's pixels and maps in physical space, so the known physical mapping is found."""
    paths, _, _ = photo_pair
    photo = dr.read_image(paths["fixed"]).to_grayscale("green")
    size = photo.grid.size[0]
    angle = np.deg2rad(25)
    direction = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    fixed = dr.Image(photo.data, dr.Grid(photo.grid.size, (5.0, -3.0), (0.2, 0.25), direction), "oblique fixed")
    c = fixed.grid.center()
    coefficients = np.zeros((2, 6))
    coefficients[:, 0] = c + [8.0, -6.0]
    coefficients[:, 1:3] = np.array([[np.cos(0.1), -np.sin(0.1)], [np.sin(0.1), np.cos(0.1)]]) * 100
    coefficients[:, 3:] = [[0.6, -0.3, 0.4], [-0.4, 0.3, 0.5]]
    truth = QuadraticTransform(coefficients, c, 100.0)
    moving_grid = dr.Grid(photo.grid.size, (-4.0, 6.0), (0.22, 0.2), direction.T)
    moving = dr.warp_image(fixed, truth.inverse(), moving_grid, "linear")
    result = register(fixed, moving, load_preset("retina-fundus"))
    index = np.random.default_rng(2).uniform(0.25 * size, 0.75 * size, (200, 2))
    points = fixed.grid.index_to_physical(index)
    landing = moving_grid.physical_to_index(truth.map_points(points))
    inside = ((landing > 5) & (landing < size - 6)).all(1)
    error_mm = np.linalg.norm(result.transform.map_points(points[inside]) - truth.map_points(points[inside]), axis=1)
    assert inside.sum() > 40 and error_mm.mean() < 0.25, (error_mm.mean(), result.figures["stages"][0])  # ~1 px


def test_keypoints_guided_by_the_previous_stage(photo_pair):
    """``start: previous``: a second keypoint stage matches around the first stage's affine estimate (no global
    matching) and fits the quadratic; the starting transform of a first stage is ignored with ``matching``."""
    paths, truth, grid = photo_pair
    pair = read_pair_inputs(paths["fixed"], paths["moving"], channel="green")
    base = load_preset("retina-fundus").to_dict()
    first = {**base["stages"][0], "transform": "affine", "guided_rounds": 0}
    second = {**base["stages"][0], "start": "previous", "start_radius_px": 60.0}
    result = register(pair.fixed, pair.moving, RegistrationConfig.from_dict({**base, "stages": [first, second]}))
    figures = result.figures["stages"][1]
    assert "start_matches" in figures and "ratio_matches" not in figures
    assert _error_px(result.transform, truth, _fov_points(grid, truth), grid).mean() < 1.0, figures
    with pytest.raises(dr.InputError, match="start must be matching or previous"):
        load_preset("retina-fundus", ["stages.0.start=nearby"])


def test_retina_multimodal_on_vessel_maps_across_contrast(photo_pair):
    """The vessel-map preset with an angiogram-like moving image (inverted green channel: bright vessels)."""
    paths, truth, grid = photo_pair
    pair = read_pair_inputs(paths["fixed"], paths["moving"], channel="green")
    inside = dr.read_image(paths["moving"]).data.float().sum(0, keepdim=True) > 20
    angiogram = pair.moving.with_data(torch.where(inside, 255 - pair.moving.data, torch.zeros_like(pair.moving.data)))
    result = register(pair.fixed, angiogram, load_preset("retina-multimodal"))
    error = _error_px(result.transform, truth, _fov_points(grid, truth), grid)
    assert error.mean() < 3.0, (error.mean(), result.figures["stages"][0])


def test_polynomial_refinement_keeps_or_improves_a_start(photo_pair):
    """The intensity refinement on vessel maps from a deliberately rough start (an affine fit): never worse in
    NCC than its start, and here it moves most of the way to the truth."""
    paths, truth, grid = photo_pair
    pair = read_pair_inputs(paths["fixed"], paths["moving"], channel="green")
    config = RegistrationConfig.from_dict({**load_preset("retina-fundus", ["stages.0.transform=affine",
                                                                           "stages.0.guided_rounds=0"]).to_dict()})
    config.stages.append(RegistrationConfig.from_dict({"stages": [{"model": "polynomial"}]}).stages[0])
    result = register(pair.fixed, pair.moving, config)
    points = _fov_points(grid, truth)
    figures = result.figures["stages"][1]
    assert figures["ncc_final"] >= figures["ncc_start"]
    start = register(pair.fixed, pair.moving, load_preset("retina-fundus", ["stages.0.transform=affine",
                                                                            "stages.0.guided_rounds=0"]))
    start_error = _error_px(start.transform, truth, points, grid).mean()
    error = _error_px(result.transform, truth, points, grid).mean()
    assert figures["refinement_kept"] and error < 0.7 * start_error, (error, start_error, figures)


def test_retina_cli_writes_colour_image_transform_and_model(photo_pair, tmp_path):
    paths, truth, grid = photo_pair
    out = {"t": tmp_path / "t.h5", "w": tmp_path / "w.png"}
    run = deepreg("register", "--fixed", paths["fixed"], "--moving", paths["moving"], "--preset", "retina-fundus",
                  "--out-transform", out["t"], "--out-image", out["w"])
    assert run.returncode == 0, run.stderr
    warped = dr.read_image(out["w"])
    fixed = dr.read_image(paths["fixed"])
    assert warped.num_channels == 3 and warped.data.dtype == torch.uint8 and warped.grid.same_as(fixed.grid)
    points = _fov_points(grid, truth)
    inside = np.round(grid.physical_to_index(points[:50])).astype(int)
    diff = (warped.data.float() - fixed.data.float() * 0.85).abs()[:, inside[:, 1], inside[:, 0]]
    assert float(diff.mean()) < 25  # the warped moving photograph lies on the fixed one (up to its darkening)
    model = read_model_parameters(model_parameters_path(out["t"]))
    assert _error_px(model, truth, points, grid).mean() < 1.0
    # FIRE-format control points (pixels) written from the truth: evaluate converts them through the images' grids
    fire = tmp_path / "points.txt"
    np.savetxt(fire, np.c_[grid.physical_to_index(points[:10]), grid.physical_to_index(truth.map_points(points[:10]))],
               fmt="%.3f")
    run = deepreg("evaluate", "--transform", out["t"], "--fire-points", fire, "--reference", paths["fixed"],
                  "--moving-reference", paths["moving"])
    assert run.returncode == 0 and "FIRE control points (10): mean error" in run.stdout, run.stderr
    assert float(run.stdout.split("mean error ")[1].split()[0]) / grid.spacing[0] < 1.0


def test_colour_fixed_and_grey_moving(photo_pair, tmp_path):
    """A colour photograph against a grey image (a red-free photograph, an angiogram saved as grey): the colour
    one goes through the preset's channel, the grey one as it is, and the warped output is grey like its source."""
    paths, truth, grid = photo_pair
    grey = tmp_path / "moving_grey.png"
    moving = dr.read_image(paths["moving"])
    moving.with_data(moving.data[1:2]).write(grey)
    out = tmp_path / "w.png"
    run = deepreg("register", "--fixed", paths["fixed"], "--moving", grey, "--preset", "retina-fundus",
                  "--out-transform", tmp_path / "t.h5", "--out-image", out)
    assert run.returncode == 0, run.stderr
    assert "moving_grey.png is RGB" not in run.stderr and "fixed.png is RGB(A); registering its green" in run.stderr
    warped = dr.read_image(out)
    assert warped.num_channels == 1 and warped.data.dtype == torch.uint8
    model = read_model_parameters(model_parameters_path(tmp_path / "t.h5"))
    assert _error_px(model, truth, _fov_points(grid, truth), grid).mean() < 1.0


def test_retina_bad_inputs(photo_pair, tmp_path):
    paths, _, _ = photo_pair
    pair = read_pair_inputs(paths["fixed"], paths["moving"], channel="green")
    volume = dr.Image(torch.rand(1, 8, 40, 40), dr.Grid((40, 40, 8)), "volume.nii.gz")
    with pytest.raises(dr.InputError, match="volume.nii.gz: the keypoints stage registers 2D images"):
        register(volume, volume.with_data(torch.rand(1, 8, 40, 40)), load_preset("retina-fundus"))
    tiny = pair.fixed.resample_to(pair.fixed.grid.with_spacing([3.0, 3.0]))  # 81 x 81 pixels
    with pytest.raises(dr.InputError, match="too small for the keypoints stage"):
        register(tiny, pair.moving, load_preset("retina-fundus"))
    speck = pair.fixed.with_data(torch.where(torch.rand_like(pair.fixed.data) > 0.999, 255.0, 0.0))
    speck.name = "dark.png"
    with pytest.raises(dr.InputError, match="dark.png: the image has no field of view"):
        register(speck, pair.moving, load_preset("retina-fundus"))
    rng = np.random.default_rng(0)
    noise = pair.moving.with_data(torch.from_numpy(rng.uniform(0, 255, pair.moving.shape).astype(np.float32))[None])
    with pytest.raises(dr.InputError, match="keypoint matches|consistent set of keypoint matches"):
        register(pair.fixed, noise, load_preset("retina-fundus"))
    with pytest.raises(dr.InputError, match="ratio must be"):
        load_preset("retina-fundus", ["stages.0.ratio=1.5"])
    with pytest.raises(dr.InputError, match="transform must be one of"):
        load_preset("retina-fundus", ["stages.0.transform=cubic"])
    bad = tmp_path / "points.txt"
    bad.write_text("1 2 3\n")
    with pytest.raises(dr.InputError, match="points.txt: not a FIRE control-point file"):
        read_fire_points(bad)
    run = deepreg("register", "--fixed", paths["fixed"], "--moving", paths["fixed"], "--preset", "retina-fundus",
                  "--out-transform", tmp_path / "t.h5")
    assert run.returncode != 0 and "the same file" in _error_line(run)
    assert not (tmp_path / "t.h5").exists()
    # a float image (not a photograph) cannot be written warped into a PNG: refused before registering
    float_moving = tmp_path / "moving.nrrd"
    pair.moving.float().with_data(pair.moving.data.float() / 255.0).write(float_moving)
    run = deepreg("register", "--fixed", paths["fixed"], "--moving", float_moving, "--preset", "retina-fundus",
                  "--out-transform", tmp_path / "t.h5", "--out-image", tmp_path / "w.png")
    assert run.returncode == 2 and "w.png: unsupported file type '.png' for a floating-point" in _error_line(run)
    assert "registered" not in run.stdout and not (tmp_path / "t.h5").exists()


# ---------------------------------------------------------------------------------------------- FIRE
def test_fire_summary_by_hand():
    thresholds, rate = success_curve([2.0, 10.0, 30.0])
    assert rate[0] == 0 and rate[thresholds.searchsorted(5.0)] == pytest.approx(1 / 3) and rate[-1] == pytest.approx(2 / 3)
    summary = fire_summary([2.0, 10.0, 30.0])
    # area: pair 1 succeeds over 23 of 25 px, pair 2 over 15, pair 3 never: (23 + 15) / 75
    assert summary["auc"] == pytest.approx(38 / 75, abs=0.003)
    assert summary["failures"] == 1 and summary["median_error_px"] == 10.0
    assert fire_summary([0.0])["auc"] == pytest.approx(1.0)


@pytest.mark.slow
def test_fire_category_p_pairs_registered():
    """Two FIRE P pairs (the smallest overlaps of the benchmark) through the command line's reader: each within
    6 px mean control-point error (before: 240-530 px)."""
    shared_only("FIRE pairs")
    for k in (2, 3):
        pair = read_pair_inputs(FIRE / f"P0{k}_1.jpg", FIRE / f"P0{k}_2.jpg", channel="green")
        points = read_fire_points(FIRE / "Ground_Truth" / f"control_points_P0{k}_1_2.txt", pair.fixed.grid,
                                  pair.moving.grid)
        result = register(pair.fixed, pair.moving, load_preset("retina-fundus"))
        assert pair_error(result.transform, points) < 6.0, (k, result.figures["stages"][0])


@pytest.mark.slow
def test_fundus_to_angiogram_within_10_px_of_our_control_points():
    """The colour photograph / fluorescein angiogram pair: the 13 control points of Testing/Data/retina (each
    image's own vessel junctions, checked by eye) within 10 px mean error (moving pixels; the angiogram's JPEG
    states 0.265 mm pixels, the photograph 1 mm: the points go through the grids)."""
    shared_only("the colour-fundus / angiogram pair")
    folder = DATA / "retina" / "cf_fa_pair"
    pair = read_pair_inputs(folder / "color_fundus_f1.jpg", folder / "fluorescein_angio_f2.jpg", channel="green")
    points_file = ROOT / "Testing" / "Data" / "retina" / "cf_fa_pair_control_points.txt"
    points = read_fire_points(points_file, pair.fixed.grid, pair.moving.grid)
    assert len(points.fixed) >= 10
    result = register(pair.fixed, pair.moving, load_preset("retina-multimodal"))
    error_px = pair_error(result.transform, points) / pair.moving.grid.spacing[0]
    before_px = np.linalg.norm(points.fixed - points.moving, axis=1).mean() / pair.moving.grid.spacing[0]
    assert error_px < 10 and before_px > 100, (error_px, before_px)


@pytest.mark.slow
def test_photographs_of_different_eyes_are_refused():
    shared_only("FIRE pairs")
    pair = read_pair_inputs(FIRE / "P01_1.jpg", FIRE / "P03_2.jpg", channel="green")
    with pytest.raises(dr.InputError, match="no consistent set of keypoint matches"):
        register(pair.fixed, pair.moving, load_preset("retina-fundus"))


# ---------------------------------------------------------------------------------------------- Slicer
def _photo_scene(paths):
    """A slicer-core scene with the two photographs as Slicer loads a PNG: single-slice RGB vector volumes."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
    from DeepRegistrationLib.slicer import nodes

    scene = slicer.vtkMRMLScene()
    out = []
    for role in ("fixed", "moving"):
        image = dr.read_image(paths[role])  # (3, j, i) uint8, 2D
        g = image.grid
        grid = dr.Grid((*g.size, 1), (*g.origin, 0.0), (*g.spacing, 1.0),
                       np.block([[g.direction_matrix(), np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]]))
        node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", role)
        nodes.update_volume_node_from_image(node, dr.Image(image.data[:, None], grid, role))
        out.append(node)
    return slicer, scene, out[0], out[1]


def test_slicer_registers_photographs_as_2d_images(photo_pair):
    """Two single-slice RGB volumes: registered in 2D through the preset's channel; the transform node moves
    points of the slice in-plane as the truth does (RAS from parent); a vector output volume gets the warped
    colours on the fixed slice."""
    from DeepRegistrationLib.slicer import logic as sl, nodes

    paths, truth, grid2 = photo_pair
    slicer, scene, fixed_node, moving_node = _photo_scene(paths)
    out = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "warped")
    outputs = sl.RegistrationLogic(scene).process(fixed_node, moving_node, "retina-fundus", outputVolumeNode=out)
    points = _fov_points(grid2, truth, 60)
    lps = np.c_[points, np.zeros(len(points))]
    flip = np.array([-1.0, -1.0, 1.0])
    tf = outputs.transform_node.GetTransformFromParent()
    mapped = np.array([np.array(tf.TransformPoint(*(p * flip))) * flip for p in lps])
    error_px = np.linalg.norm(mapped[:, :2] - truth.map_points(points), axis=1) / grid2.spacing[0]
    assert error_px.mean() < 1.0 and np.abs(mapped[:, 2]).max() < 1e-6, error_px.mean()
    warped = nodes.image_from_volume_node(out, keep_colour=True)
    assert warped.num_channels == 3 and warped.grid.size == (*grid2.size, 1)
    assert warped.data.dtype == torch.uint8 and float(warped.data.float().mean()) > 20
    with pytest.raises(dr.InputError, match="a single slice and the other a 3D volume"):
        volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "volume")
        nodes.update_volume_node_from_image(volume, dr.Image(torch.rand(1, 6, 30, 30), dr.Grid((30, 30, 6)), "v"))
        sl.RegistrationLogic(scene).process(fixed_node, volume, "retina-fundus")


@pytest.mark.slow
def test_slicer_photographs_in_the_background(photo_pair, tmp_path):
    """The panel's path: the worker process registers the written slices and the result comes back the same."""
    from DeepRegistrationLib.slicer import logic as sl, nodes

    paths, truth, grid2 = photo_pair
    slicer, scene, fixed_node, moving_node = _photo_scene(paths)
    out = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "warped")
    handle = sl.RegistrationLogic(scene).processInBackground(fixed_node, moving_node, "retina-fundus",
                                                             outputVolumeNode=out, tempDirectory=str(tmp_path))
    assert handle.wait(timeout_s=300) == "completed", handle.error or handle.log
    points = _fov_points(grid2, truth, 60)
    flip = np.array([-1.0, -1.0, 1.0])
    tf = handle.outputs.transform_node.GetTransformFromParent()
    mapped = np.array([np.array(tf.TransformPoint(*(np.r_[p, 0.0] * flip))) * flip for p in points])
    error_px = np.linalg.norm(mapped[:, :2] - truth.map_points(points), axis=1) / grid2.spacing[0]
    assert error_px.mean() < 1.0, error_px.mean()
    warped = nodes.image_from_volume_node(out, keep_colour=True)
    assert warped.num_channels == 3 and warped.grid.size == (*grid2.size, 1)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- vessels
def test_vessel_network_loss_goes_down_on_real_pseudo_labels():
    """A few steps of the recipe's training on the scikit-image photograph: the loss on a fixed batch falls."""
    from DeepRegistrationLib.methods.retina import vessel_training as vt
    from DeepRegistrationLib.methods.retina.vessel_net import VesselNet

    photo = dr.read_image(data_file("retina/skimage_retina.jpg")).to_grayscale("green")
    array = photo.data[0].numpy() / 255.0
    example = vt.vessel_example(array.astype(np.float32), "dark", working_size=384)
    assert 0.05 < example.label[example.mask].mean() < 0.2  # the top 12 % of the field of view's vesselness
    config = vt.VesselTrainConfig(batch=4, crop=96, invert_probability=0.5)
    pyramids = [[vt._rescaled(example, s) for s in (0.75, 1.0, 1.25)]]
    fixed_batch = vt._draw(pyramids, config, np.random.default_rng(123))
    torch.manual_seed(0)
    net = VesselNet()
    with torch.no_grad():
        before = float(vt._loss(net(fixed_batch[0]), fixed_batch[1], fixed_batch[2]))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(30):
        images, labels, masks = vt._draw(pyramids, config, np.random.default_rng([0, step]))
        loss = vt._loss(net(images), labels, masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(vt._loss(net(fixed_batch[0]), fixed_batch[1], fixed_batch[2]))
    assert after < 0.85 * before, (before, after)


def test_bundled_vessel_model_is_polarity_free_and_registers(photo_pair):
    """The bundled vessel network finds the vessels of a photograph as they are and inverted (an angiogram's
    polarity) alike, and the keypoint stage registers with it in place of the Frangi filter."""
    from DeepRegistrationLib.io.models import find_model, load_model
    from DeepRegistrationLib.methods.retina.fundus import working_image
    from DeepRegistrationLib.methods.retina.vessel_net import vessel_probability
    from DeepRegistrationLib.methods.retina.vessel_training import vessel_example

    net, card = load_model(find_model("vessels-retina"), network="VesselNet")
    assert "pseudo-labels" in card["training"]["labels"]
    paths, truth, grid = photo_pair
    pair = read_pair_inputs(paths["fixed"], paths["moving"], channel="green")
    array = (pair.moving.data[0].numpy() / 255.0).astype(np.float32)  # the second visit: not a training image
    example = vessel_example(array, "dark", working_size=768)
    work = working_image(array, 768)
    for image in (work.array, np.where(work.mask, 1.0 - work.array, 0.0).astype(np.float32)):
        p = vessel_probability(net, image, work.mask) > 0.5
        m, label = example.mask, example.label > 0
        score = 2 * (p & label & m).sum() / ((p & m).sum() + (label & m).sum())
        assert score > 0.5, score
    config = load_preset("retina-fundus", ['stages.0.vessel_model="vessels-retina"'])
    result = register(pair.fixed, pair.moving, config)
    assert _error_px(result.transform, truth, _fov_points(grid, truth), grid).mean() < 1.0
    with pytest.raises(dr.InputError, match="not a VesselNet"):
        register(pair.fixed, pair.moving, load_preset("retina-fundus", ['stages.0.vessel_model="voxelmorph-brain"']))
    with pytest.raises(dr.InputError, match="model 'nope' not found"):
        register(pair.fixed, pair.moving, load_preset("retina-fundus", ['stages.0.vessel_model="nope"']))


# ---------------------------------------------------------------------------------------------- correlation network
def test_vessel_registration_loss_is_lowest_aligned_and_cannot_collapse():
    """The seed's loss on real vessel maps: smallest at alignment, rising with a shift; an empty (collapsed or
    pushed-out) warped map is not a way down, because the reverse hinge charges every uncovered fixed vessel."""
    from DeepRegistrationLib.methods.retina.stage import feature_image
    from DeepRegistrationLib.methods.retina.vessel_loss import vessel_registration_loss

    photo = dr.read_image(data_file("retina/skimage_retina.jpg")).to_grayscale("green")
    _, u8 = feature_image(normalise_unit_range(photo.float()), "vessels", 256, "dark")
    target = torch.from_numpy(u8 / 255.0).float()[None, None]
    mask = torch.ones_like(target)
    losses = [float(vessel_registration_loss(torch.roll(target, shift, -1), target, mask)[0]) for shift in (0, 2, 6)]
    assert losses[0] < losses[1] < losses[2], losses
    empty, terms = vessel_registration_loss(torch.zeros_like(target), target, mask)
    assert terms["reverse_hinge"] > 0.5 * float(target.mean()) and float(empty) > losses[2], (terms, losses)


def test_regressed_homography_is_differentiable_and_exact():
    """The weighted least-squares homography of the correlation network recovers a known one from exact points,
    ignores zero-weight outliers, and passes gradients to the points."""
    from DeepRegistrationLib.methods.retina.correlation_net import apply_homography, fit_homography

    h = torch.tensor([[[1.05, 0.1, 0.2], [-0.08, 0.95, -0.1], [0.03, -0.02, 1.0]]], dtype=torch.float64)
    source = torch.rand(1, 60, 2, dtype=torch.float64) * 2 - 1
    target = apply_homography(h, source).requires_grad_(True)
    weight = torch.ones(1, 60, dtype=torch.float64)
    corrupted = target.detach().clone()
    corrupted[0, :10] += 0.5
    weight_out = weight.clone()
    weight_out[0, :10] = 0
    assert torch.allclose(fit_homography(source, corrupted, weight_out), h, atol=1e-5)
    fit = fit_homography(source, target, weight)
    assert torch.allclose(fit, h, atol=1e-5)
    fit.sum().backward()
    assert target.grad is not None and torch.isfinite(target.grad).all() and target.grad.abs().sum() > 0


def test_correlation_network_losses_go_down_on_real_vessel_maps():
    """A few steps of the recipe's training (matching + the seed's registration loss) on the scikit-image
    photograph's vessel maps: both losses fall on a fixed batch of synthetic homographies."""
    from DeepRegistrationLib.methods.retina import correlation_training as ct
    from DeepRegistrationLib.methods.retina.correlation_net import CorrelationNet
    from DeepRegistrationLib.methods.retina.stage import feature_image

    photo = dr.read_image(data_file("retina/skimage_retina.jpg")).to_grayscale("green")
    _, u8 = feature_image(normalise_unit_range(photo.float()), "vessels", 384, "dark")
    maps = [(u8 / 255.0).astype(np.float32)]
    config = ct.CorrelationTrainConfig(batch=4, lr=2e-3)
    fixed_batch = ct._batch(maps, 64, config, np.random.default_rng(123), 4)
    torch.manual_seed(0)
    net = CorrelationNet(size=64)

    def losses():
        with torch.no_grad():
            return ct.training_loss(net, *fixed_batch, 1.0)[1]

    before = losses()
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    for step in range(40):
        loss, _ = ct.training_loss(net, *ct._batch(maps, 64, config, np.random.default_rng([0, step]), 4), 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = losses()
    registration = ("dice", "cross_entropy", "reverse_hinge", "chamfer")
    assert after["matching"] < 0.8 * before["matching"], (before, after)
    assert sum(after[k] for k in registration) < sum(before[k] for k in registration), (before, after)


def test_bundled_correlation_model_registers_and_is_verified(photo_pair):
    """The bundled correlation network alone puts the second visit within a fifth of a cell of the truth (a global
    search: no start), its regressed homography too; ``retina-learned`` (network, then guided keypoints and the
    quadratic) is sub-pixel; another network in its place is refused before anything runs."""
    from DeepRegistrationLib.io.models import find_model, load_model

    net, card = load_model(find_model("correlation-retina"), network="CorrelationNet")
    assert "Chamfer" in card["training"]["loss"] and card["input"]["vessel_model"] == "vessels-retina"
    paths, truth, grid = photo_pair
    pair = read_pair_inputs(paths["fixed"], paths["moving"], channel="green")
    points = _fov_points(grid, truth)
    data = load_preset("retina-learned").to_dict()
    cell_px = grid.size[0] / ((data["stages"][0]["size"] or net.size) // 8)
    for fit in ("magsac", "regression"):
        alone = RegistrationConfig.from_dict({**data, "stages": [{**data["stages"][0], "fit": fit}]})
        error = _error_px(register(pair.fixed, pair.moving, alone).transform, truth, points, grid).mean()
        assert error < 0.2 * cell_px, (fit, error, cell_px)
    result = register(pair.fixed, pair.moving, load_preset("retina-learned"))
    assert _error_px(result.transform, truth, points, grid).mean() < 1.0, result.figures["stages"]
    assert result.figures["stages"][0]["correlation_inliers"] >= 12
    with pytest.raises(dr.InputError, match="not a CorrelationNet"):
        register(pair.fixed, pair.moving, load_preset("retina-learned", ['stages.0.network="vessels-retina"']))
    with pytest.raises(dr.InputError, match="fit must be magsac or regression"):
        load_preset("retina-learned", ['stages.0.fit="lstsq"'])


def test_retina_learned_on_an_oblique_anisotropic_grid(photo_pair):
    """The same pair with geometry a scanner might write (pixels 0.15 x 0.21 mm, axes rotated 25 degrees, an
    origin away from 0): the correlation and keypoint stages work on pixels and must carry the grids' mapping, so
    the physical transform equals the truth carried through the new geometry, to a pixel as on the plain grid."""
    paths, truth, grid = photo_pair
    pair = read_pair_inputs(paths["fixed"], paths["moving"], channel="green")
    a = np.deg2rad(25.0)
    oblique = dr.Grid(grid.size, (-12.0, 30.5), (0.15, 0.21), [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    assert pair.fixed.grid.same_as(grid) and pair.moving.grid.same_as(grid)
    fixed, moving = (dr.Image(im.data, oblique, im.name) for im in (pair.fixed, pair.moving))
    result = register(fixed, moving, load_preset("retina-learned"))
    points = _fov_points(grid, truth)  # on the plain grid; the same pixels on the oblique one:
    index = grid.physical_to_index(points)
    expected = grid.physical_to_index(truth.map_points(points))  # moving pixels of the truth
    found = oblique.physical_to_index(np.asarray(result.transform.map_points(oblique.index_to_physical(index))))
    error = np.linalg.norm(found - expected, axis=1)
    assert error.mean() < 1.0, error.mean()


# ---------------------------------------------------------------------------------------------- keypoint network
def test_homographic_adaptation_keeps_the_repeatable_keypoints():
    """The pseudo-labels: SIFT keypoints found again across random homographies of the scikit-image photograph are
    fewer than one view's, and more of them are found again in a new view (rotated 12 degrees, zoomed 8 %) than of
    one view's keypoints: the retina's structure, not its texture."""
    import cv2
    from scipy.spatial import cKDTree

    from DeepRegistrationLib.methods.retina.fundus import enhance, working_image
    from DeepRegistrationLib.methods.retina.keypoint_training import homographic_adaptation

    photo = dr.read_image(data_file("retina/skimage_retina.jpg")).to_grayscale("green")
    work = working_image((photo.data[0].numpy() / 255.0).astype(np.float32), 384)
    u8 = enhance(work)
    sift = cv2.SIFT_create(nfeatures=4000)
    single = np.array([k.pt for k in sift.detect(u8, work.mask.astype(np.uint8) * 255)])
    adapted = homographic_adaptation(u8, work.mask, np.random.default_rng(0), warps=16)
    h, w = u8.shape
    view_h = cv2.getRotationMatrix2D((w / 2 - 10, h / 2 + 7), 12, 1.08)
    view = cv2.warpAffine(u8, view_h, (w, h))
    found = cKDTree(np.array([k.pt for k in sift.detect(view, None)]))

    def repeated(points):
        mapped = points @ view_h[:, :2].T + view_h[:, 2]
        inside = (mapped > 10).all(1) & (mapped[:, 0] < w - 10) & (mapped[:, 1] < h - 10)
        return float(np.mean(found.query(mapped[inside])[0] < 2.0))

    assert 100 < len(adapted) < len(single), (len(adapted), len(single))
    assert repeated(adapted) > repeated(single) + 0.05, (repeated(adapted), repeated(single))


def test_keypoint_network_losses_go_down_on_a_real_photograph():
    """A few steps of the recipe's self-supervised training: detector and descriptor losses fall on a fixed batch."""
    from DeepRegistrationLib.methods.retina import keypoint_training as kt
    from DeepRegistrationLib.methods.retina.keypoint_net import KeypointNet

    photo = dr.read_image(data_file("retina/skimage_retina.jpg")).to_grayscale("green")
    config = kt.KeypointTrainConfig(batch=4, size=96, window=(0.3, 0.4), adaptation_warps=12, lr=2e-3)
    example = kt.keypoint_example((photo.data[0].numpy() / 255.0).astype(np.float32), 288,
                                  np.random.default_rng(0), config)
    fixed_batch = kt._batch([example], config, np.random.default_rng(123), 4)
    torch.manual_seed(0)
    net = KeypointNet()
    with torch.no_grad():
        before = kt.training_loss(net, *fixed_batch)[1]
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    for step in range(40):
        loss, _ = kt.training_loss(net, *kt._batch([example], config, np.random.default_rng([0, step]), 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = kt.training_loss(net, *fixed_batch)[1]
    assert after["detector"] < 0.9 * before["detector"], (before, after)
    assert after["descriptor"] < 0.9 * before["descriptor"], (before, after)


def test_bundled_keypoint_model_registers_and_is_verified(photo_pair):
    """``detector: learned``: the bundled keypoint network's keypoints and descriptors register the second visit
    within half a pixel of its working image (2.76 image pixels here) with the quadratic model; another network in its place is refused before anything runs; the vessel
    maps keep OpenCV detectors."""
    from DeepRegistrationLib.io.models import find_model, load_model

    _, card = load_model(find_model("keypoints-retina"), network="KeypointNet")
    assert "homographic adaptation" in card["training"]["labels"]
    paths, truth, grid = photo_pair
    pair = read_pair_inputs(paths["fixed"], paths["moving"], channel="green")
    learned = ['stages.0.detector="learned"', 'stages.0.features="enhanced"',
               f"stages.0.working_size={card['input']['working_size']}"]
    result = register(pair.fixed, pair.moving, load_preset("retina-fundus", learned))
    working_px = max(grid.size) / card["input"]["working_size"]
    error = _error_px(result.transform, truth, _fov_points(grid, truth), grid).mean()
    assert error < 0.5 * working_px, (error, working_px, result.figures["stages"])
    with pytest.raises(dr.InputError, match="not a KeypointNet"):
        register(pair.fixed, pair.moving, load_preset("retina-fundus", learned + ['stages.0.keypoint_model="vessels-retina"']))
    with pytest.raises(dr.InputError, match="vessel_detector must be one of sift, orb"):
        load_preset("retina-fundus", ['stages.0.vessel_detector="learned"'])


# ---------------------------------------------------------------------------------------------- dense refinement
def _dense_after_correlation(extra: dict | None = None) -> RegistrationConfig:
    """The correlation network's homography (MAGSAC++) followed by the dense refinement network."""
    data = load_preset("retina-learned").to_dict()
    return RegistrationConfig.from_dict({**data, "stages": [data["stages"][0],
                                                            {"model": "dense_refinement", **(extra or {})}]})


def test_refinement_network_losses_go_down_on_real_vessel_maps():
    """A few steps of the recipe's training on the scikit-image photograph's vessel maps: the synthetic truth aligns
    the pair (the seed's loss falls when the moving map is warped by it), the network starts at the identity (no
    flow), and on a batch of synthetic residual displacements the seed's vessel-map loss and the end-point error to
    the truth both fall within a few steps."""
    from DeepRegistrationLib.methods.retina import flow_training as ft
    from DeepRegistrationLib.methods.retina.flow_net import FlowRefinementNet, warp_by_flow
    from DeepRegistrationLib.methods.retina.stage import feature_image
    from DeepRegistrationLib.methods.retina.vessel_loss import vessel_registration_loss

    photo = dr.read_image(data_file("retina/skimage_retina.jpg")).to_grayscale("green")
    _, u8 = feature_image(normalise_unit_range(photo.float()), "vessels", 384, "dark")
    maps = [(u8 / 255.0).astype(np.float32)]
    config = ft.FlowTrainConfig(size=96, lr=2e-3, max_corner_px=6.0, max_elastic_px=3.0)
    fixed, moving, truth = ft.flow_batch(maps, config, np.random.default_rng(7), 4)
    aligned, _ = warp_by_flow(moving, truth)  # the truth undoes the displacement: every term of the seed's loss falls
    full = torch.ones_like(fixed)
    terms_aligned = vessel_registration_loss(aligned, fixed, full)[1]
    terms_start = vessel_registration_loss(moving, fixed, full)[1]
    assert all(terms_aligned[k] < terms_start[k] for k in terms_start), (terms_aligned, terms_start)
    assert float(truth.norm(dim=1).mean()) > 1.0
    torch.manual_seed(0)
    net = FlowRefinementNet(channels=(8, 16, 16, 16, 16, 16))
    with torch.no_grad():
        assert float(net(fixed, moving).abs().max()) < 1e-2  # starts at the identity

    def terms():
        with torch.no_grad():
            return ft.flow_training_loss(net, fixed, moving, truth, config)[1]

    before = terms()
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    for _ in range(40):  # the batch itself: the losses of real maps must go down
        loss, _ = ft.flow_training_loss(net, fixed, moving, truth, config)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = terms()
    seed_loss = ("dice", "cross_entropy", "reverse_hinge", "chamfer")
    assert after["epe_px"] < 0.9 * before["epe_px"], (before, after)
    assert sum(after[k] for k in seed_loss) < sum(before[k] for k in seed_loss), (before, after)


def test_bundled_refinement_model_refines_the_correlation_homography(photo_pair, tmp_path):
    """The bundled refinement network after the correlation network's homography (the seed's registration network:
    correlation volume -> homography -> dense refinement) brings the second visit closer to the truth than the
    homography alone, and the result, a homography after a displacement field, is written as an ITK file that
    SimpleITK reads back to the same mapping; coarse-to-fine levels report each level; the same pixels on an oblique
    anisotropic grid give the same result; another network in its place and bad settings are refused before
    anything runs."""
    from DeepRegistrationLib.io.models import find_model, load_model
    from DeepRegistrationLib.io.transforms import read_transform, write_transform

    _, card = load_model(find_model("refinement-retina"), network="FlowRefinementNet")
    assert "Chamfer" in card["training"]["loss"] and card["input"]["vessel_model"] == "vessels-retina"
    paths, truth, grid = photo_pair
    pair = read_pair_inputs(paths["fixed"], paths["moving"], channel="green")
    points = _fov_points(grid, truth)
    data = load_preset("retina-learned").to_dict()
    alone = RegistrationConfig.from_dict({**data, "stages": [data["stages"][0]]})
    error_alone = _error_px(register(pair.fixed, pair.moving, alone).transform, truth, points, grid).mean()
    result = register(pair.fixed, pair.moving, _dense_after_correlation())
    figures = result.figures["stages"][1]
    error = _error_px(result.transform, truth, points, grid).mean()
    assert figures["refinement_kept"] and error < 0.7 * error_alone, (error, error_alone, figures)
    assert figures["refinement_correlation_final"] > figures["refinement_correlation_start"]
    coarse_to_fine = register(pair.fixed, pair.moving, _dense_after_correlation({"working_sizes": [256, 768]}))
    levels = coarse_to_fine.figures["stages"][1]["refinement_levels"]
    assert [lv["working_size"] for lv in levels] == [256, 768] and levels[0]["kept"], levels
    assert _error_px(coarse_to_fine.transform, truth, points, grid).mean() < 0.7 * error_alone
    path = tmp_path / "dense.h5"
    write_transform(result.transform, path)
    back = read_transform(path)
    assert np.abs(np.asarray(back.map_points(points)) - np.asarray(result.transform.map_points(points))).max() \
        < 0.05 * grid.spacing[0]
    a = np.deg2rad(25.0)
    oblique = dr.Grid(grid.size, (-12.0, 30.5), (0.15, 0.21), [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    fixed, moving = (dr.Image(im.data, oblique, im.name) for im in (pair.fixed, pair.moving))
    on_oblique = register(fixed, moving, _dense_after_correlation())
    index = grid.physical_to_index(points)
    found = oblique.physical_to_index(np.asarray(on_oblique.transform.map_points(oblique.index_to_physical(index))))
    plain = grid.physical_to_index(np.asarray(result.transform.map_points(points)))
    assert np.linalg.norm(found - plain, axis=1).mean() < 0.5
    with pytest.raises(dr.InputError, match="not a FlowRefinementNet"):
        register(pair.fixed, pair.moving, _dense_after_correlation({"network": "correlation-retina"}))
    with pytest.raises(dr.InputError, match="passes must be"):
        _dense_after_correlation({"passes": 0})
    with pytest.raises(dr.InputError, match="working_sizes"):
        _dense_after_correlation({"working_sizes": [16]})


def test_train_refinement_and_correlation_commands_write_verified_models(tmp_path, oasis_t1, capsys):
    """``deepreg train refinement`` and ``deepreg train correlation`` (a few steps on the scikit-image photograph's
    Frangi maps) write model folders whose cards record the maps' sizes and the loss and whose weights load
    verified; a 3D training image is refused with its name."""
    from DeepRegistrationLib.cli import main
    from DeepRegistrationLib.io.models import find_model, load_model

    photo = str(data_file("retina/skimage_retina.jpg"))
    out = tmp_path / "refinement"
    assert main(["train", "refinement", "--images", photo, "--working-size", "256", "--coarse-sizes", "192",
                 "--size", "64", "--steps", "2", "--batch", "2", "--validate-every", "1", "--out", str(out)]) == 0
    _, card = load_model(find_model(str(out)), network="FlowRefinementNet")
    assert card["input"]["trained_sizes"] == [192, 256] and "Chamfer" in card["training"]["loss"]
    assert card["training"]["steps_done"] == 2
    out = tmp_path / "correlation"
    assert main(["train", "correlation", "--images", photo, "--working-size", "256", "--size", "64", "--steps", "2",
                 "--batch", "2", "--validate-every", "1", "--out", str(out)]) == 0
    load_model(find_model(str(out)), network="CorrelationNet")
    volume = tmp_path / "t1.nii.gz"
    oasis_t1.write(volume)
    capsys.readouterr()
    assert main(["train", "refinement", "--images", str(volume), "--steps", "1", "--out", str(tmp_path / "no")]) != 0
    assert "t1.nii.gz: the refinement network trains on 2D images" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()

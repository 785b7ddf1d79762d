"""The MRML bridge against real Slicer scenes (the ``slicer-core`` wheel: real MRML, no Qt, no app).

Every check applies our transform nodes with Slicer's own code (volume resampling, transform
storage, point mapping) and compares with what the library computes.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
import vtk  # noqa: E402  (slicer-core's VTK)
from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

import DeepRegistrationLib as dr  # noqa: E402
from conftest import data_file  # noqa: E402
from DeepRegistrationLib.slicer import logic as sl, nodes, transforms as slt  # noqa: E402
from DeepRegistrationLib.synthetic import oblique_grid, smooth_field  # noqa: E402
from DeepRegistrationLib.transforms import RigidTransform, compose  # noqa: E402

vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
FLIP = np.array([-1.0, -1.0, 1.0])
FAST = {"overrides": ["levels_mm=[8,4]"]}


def add_volume(scene, image: dr.Image, name: str, cls: str = "vtkMRMLScalarVolumeNode"):
    node = scene.AddNewNodeByClass(cls, name)
    nodes.update_volume_node_from_image(node, image)
    return node


def scene_state(scene) -> list:
    """Node IDs, parent transforms and a voxel checksum of every volume: what must not change."""
    state = []
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        entry = [node.GetID(), node.GetName()]
        if node.IsA("vtkMRMLTransformableNode"):
            entry.append(node.GetTransformNodeID())
        if node.IsA("vtkMRMLVolumeNode") and node.GetImageData() is not None:
            scalars = vtk_to_numpy(node.GetImageData().GetPointData().GetScalars())
            entry.append(float(np.asarray(scalars, dtype=np.float64).sum()))
        state.append(entry)
    return state


@pytest.fixture(scope="module")
def pair(oasis_t1):
    """Fixed: OASIS T1 on an oblique 1.8 x 2.4 x 5 mm grid; the known truth maps fixed -> moving."""
    grid = oblique_grid(oasis_t1.grid)
    fixed = oasis_t1.resample_to(grid.with_spacing([2 * s for s in grid.spacing]))
    fixed.name = "fixed"
    return fixed, fixed.grid.center(), oasis_t1


def make_moving(oasis_t1, truth) -> dr.Image:
    """The T1 seen through ``truth`` (fixed -> moving), on a 2 mm axis-aligned grid."""
    grid = oasis_t1.grid.with_spacing([2.0, 2.0, 2.0])
    moving = dr.warp_image(oasis_t1, truth.inverse() if truth.is_linear else None, grid)
    moving.name = "moving"
    return moving


def brain_points(image: dr.Image, count: int = 500, seed: int = 0) -> np.ndarray:
    """Random LPS points inside the brain of ``image`` (continuous positions, not voxel centres)."""
    rng = np.random.default_rng(seed)
    idx = np.argwhere(image.numpy() > 0.1 * float(image.data.max()))[:, ::-1].astype(np.float64)
    pick = idx[rng.choice(len(idx), count, replace=False)] + rng.uniform(-0.5, 0.5, (count, 3))
    return image.grid.index_to_physical(pick)


def node_maps(node, points_lps: np.ndarray) -> np.ndarray:
    """Points mapped by the node's transform from parent (Slicer: RAS in, RAS out), in LPS."""
    tf = node.GetTransformFromParent()
    return np.array([np.array(tf.TransformPoint(*(p * FLIP))) * FLIP for p in points_lps])


def library_transform_of(node, scene, tmp_path, reference: dr.Grid) -> dr.Transform:
    """The node written by Slicer's ``vtkMRMLTransformStorageNode`` to ``.h5``, read by the library (SimpleITK)."""
    storage = slicer.vtkMRMLTransformStorageNode()
    scene.AddNode(storage)
    path = str(tmp_path / f"{node.GetName()}.h5")
    storage.SetFileName(path)
    assert storage.WriteData(node) == 1
    scene.RemoveNode(storage)
    return dr.read_transform(path, reference=reference)


def slicer_resampled(scene, volume_node, transform_node, reference_node) -> np.ndarray:
    """``volume_node`` placed under ``transform_node`` and resampled by Slicer's own volumes logic onto
    ``reference_node``'s grid (the volume is put back where it was)."""
    parent = volume_node.GetTransformNodeID()
    volume_node.SetAndObserveTransformNodeID(transform_node.GetID())
    vlogic = slicer.vtkSlicerVolumesLogic()
    vlogic.SetMRMLScene(scene)
    resampled_node = vlogic.ResampleVolumeToReferenceVolume(volume_node, reference_node)
    resampled = np.array(slicer.util.arrayFromVolume(resampled_node))
    scene.RemoveNode(resampled_node)
    volume_node.SetAndObserveTransformNodeID(parent)
    return resampled


def interior(image: dr.Image, transform, grid: dr.Grid) -> np.ndarray:
    """Voxels of ``grid`` that ``transform`` maps inside ``image``, away from the grid's faces (where linear and
    VTK's resampling may differ by the border rule)."""
    inside = dr.warp_image(image.with_data(torch.ones_like(image.data)), transform, grid, "nearest").numpy() > 0
    inside[[0, -1]] = inside[:, [0, -1]] = inside[:, :, [0, -1]] = False
    return inside


# ---------------------------------------------------------------------- volumes
def test_volume_node_roundtrip_oblique_anisotropic(oasis_oblique):
    scene = slicer.vtkMRMLScene()
    node = add_volume(scene, oasis_oblique, "t1")
    back = nodes.image_from_volume_node(node)
    assert back.grid.same_as(oasis_oblique.grid, atol=1e-9)
    assert back.data.dtype == oasis_oblique.data.dtype
    assert torch.equal(back.data, oasis_oblique.data)
    # Slicer's own geometry: the RAS position of a voxel is the LPS one flipped
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ijk = np.array([[0, 0, 0], [12.0, 7.0, 30.0], [a - 1 for a in oasis_oblique.grid.size]])
    ras = [np.array(m.MultiplyPoint([*p, 1.0])[:3]) for p in ijk]
    np.testing.assert_allclose(np.array(ras) * FLIP, oasis_oblique.grid.index_to_physical(ijk), atol=1e-9)
    assert node.GetSpacing() == pytest.approx(oasis_oblique.grid.spacing)


# ---------------------------------------------------------------------- known rigid case
def test_rigid_result_node_matches_library(pair, oasis_t1, tmp_path):
    fixed, center, _ = pair
    truth = RigidTransform(np.radians([6.0, -4.0, 8.0]), [5.0, -3.0, 7.0], center=center)  # fixed -> moving
    moving = make_moving(oasis_t1, truth)
    scene = slicer.vtkMRMLScene()
    fixed_node, moving_node = add_volume(scene, fixed, "fixed"), add_volume(scene, moving, "moving")
    before = np.array(slicer.util.arrayFromVolume(moving_node))
    out = sl.RegistrationLogic(scene).process(fixed_node, moving_node, "rigid", **FAST)
    node = out.transform_node
    assert node.IsLinear() and out.volume_node is None
    # the result is the truth (points in the brain, mm)
    pts = brain_points(fixed)
    got = node_maps(node, pts)
    assert np.abs(got - truth.map_points(pts)).max() < 0.5
    # no output volume: the moving volume is shown through the transform; its voxels are untouched
    assert moving_node.GetTransformNodeID() == node.GetID()
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(moving_node), before)
    assert node.GetNodeReference("spatialRegistrationFixed") is fixed_node
    assert node.GetNodeReference("spatialRegistrationMoving") is moving_node
    assert json.loads(node.GetAttribute("DeepRegistration.figures"))["jacobian_folding_percent"] == 0.0
    # Slicer's resampling through the node == the library's warp of the same transform
    library = slt.transform_from_node(node)
    np.testing.assert_allclose(library.map_points(pts), got, atol=1e-6)
    warped = dr.warp_image(moving, library, fixed.grid).numpy()
    vlogic = slicer.vtkSlicerVolumesLogic()
    vlogic.SetMRMLScene(scene)
    resampled = slicer.util.arrayFromVolume(vlogic.ResampleVolumeToReferenceVolume(moving_node, fixed_node))
    inside = dr.warp_image(moving.with_data(torch.ones_like(moving.data)), library, fixed.grid, "nearest").numpy() > 0
    inside[[0, -1]] = inside[:, [0, -1]] = inside[:, :, [0, -1]] = False
    assert np.abs(resampled - warped)[inside].max() < 1e-3 * float(moving.data.max())
    # the node's .h5 (Slicer writes it) reads in SimpleITK as the same mapping
    from_file = library_transform_of(node, scene, tmp_path, fixed.grid)
    np.testing.assert_allclose(from_file.map_points(pts), got, atol=1e-6)


# ---------------------------------------------------------------------- known deformable case
@pytest.fixture(scope="module")
def deformable_run(pair, oasis_t1):
    fixed, center, _ = pair
    truth = compose(RigidTransform(np.radians([3.0, -2.0, 4.0]), [3.0, -2.0, 4.0], center=center),
                    smooth_field(center, amplitude=4.0))
    grid = oasis_t1.grid.with_spacing([2.0, 2.0, 2.0])
    # moving voxels seen through the inverse of truth: sample the T1 at truth^-1 of the moving grid points
    inv = dr.to_displacement_field(truth, grid).inverse()
    moving = dr.warp_image(oasis_t1, inv, grid)
    moving.name = "moving"
    scene = slicer.vtkMRMLScene()
    fixed_node, moving_node = add_volume(scene, fixed, "fixed"), add_volume(scene, moving, "moving")
    warped_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "warped")
    jac_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "jacobian")
    out = sl.RegistrationLogic(scene).process(fixed_node, moving_node, "deformable-fast", outputVolumeNode=warped_node,
                                              jacobianVolumeNode=jac_node, overrides=["levels_mm=[8,4]"])
    return scene, fixed, moving, truth, out, fixed_node, moving_node


def test_deformable_result_node_matches_library(deformable_run, tmp_path):
    scene, fixed, moving, truth, out, fixed_node, moving_node = deformable_run
    node = out.transform_node
    assert not node.IsLinear()
    assert moving_node.GetTransformNodeID() is None  # an output volume was asked for: the moving stays put
    # the node's .h5 (written by Slicer) is what SimpleITK reads; Slicer maps points as the file says (0.01 mm)
    from_file = library_transform_of(node, scene, tmp_path, fixed.grid)
    pts = brain_points(fixed)
    np.testing.assert_allclose(node_maps(node, pts), from_file.map_points(pts), atol=0.01)
    # and the registration recovered the truth better than its affine part alone
    err = np.linalg.norm(from_file.map_points(pts) - truth.map_points(pts), axis=1)
    assert err.mean() < 1.5, err.mean()
    # Slicer's resampling through the node == the library's warped output volume
    resampled = slicer_resampled(scene, moving_node, node, fixed_node)
    library = np.asarray(slicer.util.arrayFromVolume(out.volume_node))
    inside = interior(moving, from_file, fixed.grid)
    assert np.abs(resampled - library)[inside].max() < 1e-3 * float(moving.data.max())
    # hardening (Slicer's transform logic) moves the moving volume's voxels the same way
    tlogic = slicer.vtkSlicerTransformLogic()
    hardened = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "hardened")
    nodes.update_volume_node_from_image(hardened, moving)
    hardened.SetAndObserveTransformNodeID(node.GetID())
    assert tlogic.hardenTransform(hardened)
    again = nodes.image_from_volume_node(hardened)
    check = again.resample_to(fixed.grid).numpy()
    assert np.abs(check - library)[inside].mean() < 0.02 * float(moving.data.max())
    moving_node.SetAndObserveTransformNodeID(None)
    scene.RemoveNode(hardened)


def test_deformable_outputs_on_fixed_grid(deformable_run):
    scene, fixed, moving, truth, out, fixed_node, moving_node = deformable_run
    for node in (out.volume_node, out.jacobian_node):
        assert nodes.image_from_volume_node(node).grid.same_as(fixed.grid, atol=1e-6)
    jac = slicer.util.arrayFromVolume(out.jacobian_node)
    assert jac.min() > 0 and abs(float(np.median(jac)) - 1.0) < 0.2
    assert out.figures["jacobian_folding_percent"] == 0.0 and out.figures["device"] == "cpu"


def test_scene_with_results_survives_mrb(deformable_run, tmp_path):
    scene, fixed, moving, truth, out, fixed_node, moving_node = deformable_run
    params = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "DeepRegistration")
    params.SetAttribute("ModuleName", "DeepRegistration")
    params.SetParameter("preset", "deformable-fast")
    params.SetNodeReferenceID("fixedVolume", fixed_node.GetID())
    params.SetNodeReferenceID("movingVolume", moving_node.GetID())
    params.SetNodeReferenceID("outputTransform", out.transform_node.GetID())
    for node in (fixed_node, moving_node, out.transform_node, out.volume_node, out.jacobian_node):
        node.AddDefaultStorageNode()
    # at the nodes of the field's grid: Slicer reloads grid transforms with cubic interpolation, which
    # agrees with ITK's linear one exactly there (and to a fraction of a mm between them)
    field = slt.node_parts(out.transform, fixed.grid)[0]
    pts = field.grid.physical_points(dtype=torch.float64).reshape(-1, 3).numpy()[::101]
    expected = node_maps(out.transform_node, pts)
    path = str(tmp_path / "scene.mrb")
    assert scene.WriteToMRB(path)
    scene.RemoveNode(params)

    loaded = slicer.vtkMRMLScene()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ".slicer-cache").touch()
    manager = slicer.vtkCacheManager()
    manager.SetRemoteCacheDirectory(str(cache))
    io = slicer.vtkDataIOManager()
    io.SetCacheManager(manager)
    loaded.SetCacheManager(manager)
    loaded.SetDataIOManager(io)
    assert loaded.ReadFromMRB(path, True)
    p = loaded.GetFirstNodeByName("DeepRegistration")
    assert p.GetParameter("preset") == "deformable-fast"
    t = p.GetNodeReference("outputTransform")
    assert t.GetNodeReference("spatialRegistrationFixed").GetName() == "fixed"
    assert t.GetNodeReference("spatialRegistrationMoving").GetName() == "moving"
    assert t.GetAttribute("DeepRegistration.preset") == "deformable-fast"
    np.testing.assert_allclose(node_maps(t, pts), expected, atol=1e-4)
    between = brain_points(fixed, 300, seed=2)
    gap = np.linalg.norm(node_maps(t, between) - out.transform.map_points(between), axis=1)
    print(f"reloaded grid (cubic) vs library (linear) between nodes: mean {gap.mean():.3f} max {gap.max():.3f} mm")
    assert gap.mean() < 0.1 and gap.max() < 0.5
    for name in ("fixed", "moving", "warped", "jacobian"):  # same voxels in the same place (Slicer's NRRD
        a = nodes.image_from_volume_node(loaded.GetFirstNodeByName(name))  # reader makes left-handed grids right-handed)
        b = nodes.image_from_volume_node(scene.GetFirstNodeByName(name))
        assert np.abs(a.resample_to(b.grid).numpy() - b.numpy()).max() < 1e-5 * float(b.data.abs().max()), name
    assert p.GetNodeReference("fixedVolume").GetName() == "fixed"


# ---------------------------------------------------------------------- background
def test_background_reports_progress_and_completes(pair, oasis_t1, tmp_path):
    fixed, center, _ = pair
    moving = make_moving(oasis_t1, RigidTransform(np.radians([0.0, 0.0, 5.0]), [4.0, 0.0, 0.0], center=center))
    scene = slicer.vtkMRMLScene()
    fixed_node, moving_node = add_volume(scene, fixed, "fixed"), add_volume(scene, moving, "moving")
    warped_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "warped")
    events, finished = [], []
    handle = sl.RegistrationLogic(scene).processInBackground(
        fixed_node, moving_node, "rigid", outputVolumeNode=warped_node, onProgress=events.append,
        onFinished=finished.append, tempDirectory=str(tmp_path), **FAST)
    assert handle.wait(timeout_s=300) == "completed", handle.error or handle.log
    assert finished == [handle] and len(events) > 10
    assert events[-1]["fraction"] == 1.0 and {"stage", "level", "iteration", "loss"} <= set(events[0])
    node = handle.outputs.transform_node
    assert node.IsLinear() and node.GetNodeReference("spatialRegistrationMoving") is moving_node
    assert handle.outputs.figures["device"] == "cpu"
    assert nodes.image_from_volume_node(warped_node).grid.same_as(fixed.grid, atol=1e-6)
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone


def test_background_cancel_leaves_scene_unchanged(pair, oasis_t1, tmp_path):
    fixed, center, _ = pair
    moving = make_moving(oasis_t1, RigidTransform(np.radians([0.0, 0.0, 5.0]), [4.0, 0.0, 0.0], center=center))
    scene = slicer.vtkMRMLScene()
    fixed_node, moving_node = add_volume(scene, fixed, "fixed"), add_volume(scene, moving, "moving")
    before = scene_state(scene)
    events = []
    handle = sl.RegistrationLogic(scene).processInBackground(
        fixed_node, moving_node, "deformable-accurate", onProgress=events.append, tempDirectory=str(tmp_path))
    deadline = time.monotonic() + 120
    while not events and time.monotonic() < deadline:
        handle.poll()
        time.sleep(0.05)
    assert events, handle.log
    start = time.monotonic()
    handle.cancel()
    assert time.monotonic() - start < 1.0
    assert handle.state == "cancelled" and handle.outputs is None
    assert handle.process.poll() is not None
    assert scene_state(scene) == before
    assert list(tmp_path.iterdir()) == []


def test_background_failure_is_reported(pair, tmp_path):
    fixed, _, _ = pair
    scene = slicer.vtkMRMLScene()
    fixed_node = add_volume(scene, fixed, "fixed")
    flat = add_volume(scene, fixed.with_data(torch.ones_like(fixed.data)), "flat")
    g = fixed.grid
    far = add_volume(scene, dr.Image(fixed.data, dr.Grid(g.size, np.asarray(g.origin) + 5000.0, g.spacing,
                                                         g.direction)), "far")
    before = scene_state(scene)
    with pytest.raises(dr.InputError, match="flat: the image is constant"):  # refused before a worker starts
        sl.RegistrationLogic(scene).processInBackground(fixed_node, flat, "rigid", tempDirectory=str(tmp_path))
    # found only by the worker: no overlap once the (absent) initialisation is applied
    handle = sl.RegistrationLogic(scene).processInBackground(fixed_node, far, "rigid", tempDirectory=str(tmp_path),
                                                             overrides=["initialise=none"])
    assert handle.wait(timeout_s=120) == "failed"
    assert "do not overlap" in handle.error
    assert scene_state(scene) == before


# ---------------------------------------------------------------------- bad input
@pytest.fixture()
def small_scene(pair):
    fixed, _, _ = pair
    scene = slicer.vtkMRMLScene()
    return scene, fixed, add_volume(scene, fixed, "fixed"), add_volume(scene, fixed.with_data(fixed.data * 2), "moving")


def _refused(scene, match: str, *args, **kwargs) -> None:
    before = scene_state(scene)
    with pytest.raises(dr.InputError, match=match):
        sl.RegistrationLogic(scene).process(*args, **kwargs)
    with pytest.raises(dr.InputError, match=match):
        sl.RegistrationLogic(scene).processInBackground(*args, **kwargs)
    assert scene_state(scene) == before


def test_same_node_twice_refused(small_scene):
    scene, _, fixed_node, _ = small_scene
    _refused(scene, "both the fixed and the moving", fixed_node, fixed_node, "rigid")


def test_vector_and_4d_volumes_refused(small_scene):
    """An RGB volume is registered through the preset's channel (here a black one: refused as constant, which
    shows it got that far); other vector and 4D volumes are refused."""
    scene, fixed, fixed_node, moving_node = small_scene
    vec = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    slicer.util.updateVolumeFromArray(vec, np.zeros((*fixed.shape, 3), dtype=np.uint8))
    _refused(scene, "rgb: the image is constant", fixed_node, vec, "rigid")
    two = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "two-components")
    slicer.util.updateVolumeFromArray(two, np.zeros((*fixed.shape, 2), dtype=np.float32))
    _refused(scene, "two-components: the moving volume has 2 components", fixed_node, two, "rigid")
    four = scene.AddNewNodeByClass("vtkMRMLDiffusionWeightedVolumeNode", "dwi")  # a 4D volume
    slicer.util.updateVolumeFromArray(four, np.zeros((*fixed.shape, 7), dtype=np.float32))
    _refused(scene, "dwi: the fixed volume has 7 components", four, moving_node, "rigid")


def test_labelmap_as_fixed_refused(small_scene):
    scene, fixed, fixed_node, moving_node = small_scene
    lab = add_volume(scene, fixed.with_data((fixed.data > 0.2).to(torch.int16)), "labels", "vtkMRMLLabelMapVolumeNode")
    _refused(scene, "labels: the fixed volume is a labelmap", lab, moving_node, "rigid")


def test_empty_masks_refused(small_scene):
    scene, fixed, fixed_node, moving_node = small_scene
    empty = add_volume(scene, fixed.with_data(torch.zeros_like(fixed.data, dtype=torch.int16)), "empty",
                       "vtkMRMLLabelMapVolumeNode")
    _refused(scene, "empty.*empty", fixed_node, moving_node, "rigid", fixedMaskNode=empty)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    _refused(scene, "seg: the moving mask segmentation has no segments", fixed_node, moving_node, "rigid",
             movingMaskNode=seg)


def test_segmentation_mask_is_used(small_scene):
    scene, fixed, fixed_node, moving_node = small_scene
    brain = (fixed.numpy() > 0.1 * float(fixed.data.max())).astype(np.uint8)
    labels = add_volume(scene, fixed.with_data(torch.from_numpy(brain)[None]), "brain-labels", "vtkMRMLLabelMapVolumeNode")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "brain")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labels, seg)
    mask = nodes.mask_from_node(seg, fixed_node, "fixed")
    assert mask.grid.same_as(fixed.grid, atol=1e-6)
    np.testing.assert_array_equal(mask.numpy() != 0, brain != 0)


def test_unknown_preset_and_missing_file_refused(small_scene, tmp_path):
    scene, _, fixed_node, moving_node = small_scene
    _refused(scene, "unknown preset 'no-such-preset'", fixed_node, moving_node, "no-such-preset")
    missing = str(tmp_path / "missing-model.json")
    _refused(scene, "missing-model.json: preset file not found", fixed_node, moving_node, missing)
    _refused(scene, "unknown registration parameter 'iterationz'", fixed_node, moving_node, "rigid", iterationz=3)


def test_missing_or_corrupt_model_refused(small_scene, voxelmorph_model, tmp_path):
    """The voxelmorph presets in the panel: a missing or corrupt model file is one clear message, scene untouched."""
    import shutil

    scene, _, fixed_node, moving_node = small_scene
    gone = tmp_path / "gone"
    _refused(scene, "gone: model folder not found", fixed_node, moving_node, "voxelmorph-brain",
             overrides=[f"voxelmorph.network={gone}"])
    corrupt = tmp_path / "corrupt"
    shutil.copytree(voxelmorph_model, corrupt)
    (corrupt / "weights.pt").write_bytes((corrupt / "weights.pt").read_bytes()[:-100])
    _refused(scene, "checksum mismatch", fixed_node, moving_node, "voxelmorph-brain-io",
             overrides=[f"voxelmorph.network={corrupt}"])


def test_output_volume_cannot_be_an_input(small_scene):
    scene, _, fixed_node, moving_node = small_scene
    _refused(scene, "output volume is an input", fixed_node, moving_node, "rigid", outputVolumeNode=moving_node)


def test_landmark_counts_must_match(small_scene):
    scene, fixed, fixed_node, moving_node = small_scene
    a = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "F")
    b = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "M")
    for i in range(4):
        a.AddControlPoint(float(i), 0.0, 0.0)
    for i in range(3):
        b.AddControlPoint(float(i), 0.0, 0.0)
    _refused(scene, "landmark counts differ: 4 fixed", fixed_node, moving_node, "rigid", fixedLandmarksNode=a,
             movingLandmarksNode=b)


def test_degenerate_landmarks_refused(small_scene):
    scene, fixed, fixed_node, moving_node = small_scene
    line = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "on-a-line")
    same = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "all-at-one-place")
    for i in range(4):
        line.AddControlPoint(10.0 * i, 0.0, 0.0)
        same.AddControlPoint(5.0, 5.0, 5.0)
    _refused(scene, "on-a-line: the landmarks lie on one line", fixed_node, moving_node, "rigid",
             fixedLandmarksNode=line, movingLandmarksNode=line)
    _refused(scene, "all-at-one-place: the landmarks are all at the same position", fixed_node, moving_node, "rigid",
             fixedLandmarksNode=same, movingLandmarksNode=same)


def test_nonsense_parameter_values_and_single_slices_refused(small_scene):
    scene, fixed, fixed_node, moving_node = small_scene
    _refused(scene, "learning_rate must be a number > 0, got -1", fixed_node, moving_node, "rigid", overrides=[
        "learning_rate=-1"])
    _refused(scene, "iterations must be a whole number", fixed_node, moving_node, "rigid", overrides=[
        "iterations=abc"])
    g = fixed.grid
    one = dr.Image(fixed.data[:, :1], dr.Grid((*g.size[:2], 1), g.origin, g.spacing, g.direction), "slice")
    slice_node = add_volume(scene, one, "one-slice")
    _refused(scene, "one-slice: the fixed volume is a single slice", slice_node, moving_node, "rigid")


def test_landmarks_and_initial_transform_nodes_convert():
    scene = slicer.vtkMRMLScene()
    m = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "F")
    m.AddControlPoint(10.0, 20.0, 30.0)
    np.testing.assert_allclose(nodes.points_from_markups(m, "fixed"), [[-10.0, -20.0, 30.0]])
    t = scene.AddNewNodeByClass("vtkMRMLTransformNode", "init")
    truth = RigidTransform(np.radians([5.0, 10.0, -3.0]), [1.0, 2.0, 3.0], center=[10.0, 0.0, 0.0])
    slt.update_transform_node(t, truth)
    assert t.IsLinear()
    pts = np.array([[0.0, 0.0, 0.0], [50.0, -20.0, 10.0]])
    np.testing.assert_allclose(slt.transform_from_node(t).map_points(pts), truth.map_points(pts), atol=1e-9)
    np.testing.assert_allclose(node_maps(t, pts), truth.map_points(pts), atol=1e-9)
    grid_node = scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    c = np.zeros(3)
    slt.update_transform_node(grid_node, smooth_field(c))
    with pytest.raises(dr.InputError, match="warp: only a linear"):
        slt.transform_from_node(grid_node)


def test_parameters_become_overrides():
    assert sl.overrides_from_parameters({"similarity": "mi", "iterations": 5, "regularisation_weight": 0.5,
                                         "levels_mm": None, "overrides": ["seed=3"]}) == [
        'similarity="mi"', "similarity_options={}", "iterations=5", "svf.regularisation_weight=0.5", "seed=3"]


def test_node_maps_points_like_the_registration_result(deformable_run):
    """The node (field resampled on the fixed grid) and the engine's own transform agree at any point."""
    scene, fixed, moving, truth, out, fixed_node, moving_node = deformable_run
    pts = brain_points(fixed, 2000, seed=1)
    diff = np.linalg.norm(node_maps(out.transform_node, pts) - out.transform.map_points(pts), axis=1)
    assert diff.max() < 0.01, diff.max()


def test_voxelmorph_preset_gives_a_native_node(pair):
    """The panel's voxelmorph-brain preset with the bundled model, on OASIS 0002 (2 mm) -> 0001 on an oblique
    1.8 x 2.4 x 5 mm grid: the network's field, on its own 2 mm model grid, comes back as a node that maps points
    exactly as the library's transform does."""
    fixed, _, _ = pair
    moving = dr.read_image(data_file("brain3d/oasis/OAS1_0002_MR1_aligned_norm.nii.gz"))
    moving = moving.resample_to(moving.grid.with_spacing([2.0] * 3))
    scene = slicer.vtkMRMLScene()
    fixed_node, moving_node = add_volume(scene, fixed, "fixed"), add_volume(scene, moving, "moving")
    out = sl.RegistrationLogic(scene).process(fixed_node, moving_node, "voxelmorph-brain", device="cpu")
    stage = out.figures["stages"][-1]
    assert stage["model"] == "voxelmorph" and stage["network"] == "voxelmorph-brain"
    assert out.transform_node.GetAttribute("DeepRegistration.preset") == "voxelmorph-brain"
    pts = brain_points(fixed, 2000, seed=2)
    diff = np.linalg.norm(node_maps(out.transform_node, pts) - out.transform.map_points(pts), axis=1)
    assert diff.max() < 0.01, diff.max()


# ---------------------------------------------------------------------- displacement field only, inverse node
@pytest.fixture(scope="module")
def field_only_run(pair, oasis_t1):
    """deformable-fast with ``displacementFieldOnly`` and an inverse node, on the oblique anisotropic fixed grid."""
    fixed, center, _ = pair
    truth = compose(RigidTransform(np.radians([2.0, -3.0, 4.0]), [2.0, 3.0, -2.0], center=center),
                    smooth_field(center, amplitude=3.0))
    grid = oasis_t1.grid.with_spacing([2.0, 2.0, 2.0])
    moving = dr.warp_image(oasis_t1, dr.to_displacement_field(truth, grid).inverse(), grid)
    moving.name = "moving"
    scene = slicer.vtkMRMLScene()
    fixed_node, moving_node = add_volume(scene, fixed, "fixed"), add_volume(scene, moving, "moving")
    inverse_node = scene.AddNewNodeByClass("vtkMRMLTransformNode", "inverse")
    warped_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "warped")
    out = sl.RegistrationLogic(scene).process(fixed_node, moving_node, "deformable-fast", outputVolumeNode=warped_node,
                                              inverseTransformNode=inverse_node, displacementFieldOnly=True, **FAST)
    return scene, fixed, moving, out, fixed_node, moving_node


def test_displacement_field_only_node(field_only_run):
    """One grid transform on the fixed grid: ``arrayFromGridTransform`` reads it, it equals the registration at the
    fixed voxels, and Slicer's resampling through it gives the output volume."""
    scene, fixed, moving, out, fixed_node, moving_node = field_only_run
    node = out.transform_node
    grid_tf = node.GetTransformFromParent()
    assert grid_tf.IsA("vtkOrientedGridTransform")
    vectors = slicer.util.arrayFromGridTransform(node)
    assert vectors.shape == (*fixed.grid.shape, 3)
    # RAS vectors at the fixed voxel centres == the library's mapping there (linear part included)
    x = fixed.grid.physical_points(dtype=torch.float64).reshape(-1, 3)
    expected = (out.transform.map_points(x) - x).numpy() * FLIP
    np.testing.assert_allclose(vectors.reshape(-1, 3), expected, atol=1e-3)
    pts = brain_points(fixed, 300)
    gap = np.linalg.norm(node_maps(node, pts) - out.transform.map_points(pts), axis=1)
    assert gap.mean() < 0.1, gap.mean()  # between voxel centres: linear interpolation of the whole mapping
    resampled = slicer_resampled(scene, moving_node, node, fixed_node)
    library = np.asarray(slicer.util.arrayFromVolume(out.volume_node))
    inside = interior(moving, out.transform, fixed.grid)
    assert np.abs(resampled - library)[inside].max() < 1e-3 * float(moving.data.max())


def test_inverse_node(field_only_run):
    """The inverse node maps moving -> fixed (from parent) on the moving grid: it undoes the forward node, agrees with
    VTK's own iterative inverse of the forward node, and Slicer resamples the fixed volume through it onto the moving
    grid as the library does."""
    scene, fixed, moving, out, fixed_node, moving_node = field_only_run
    inverse_node, forward_node = out.inverse_node, out.transform_node
    assert inverse_node.GetTransformFromParent().IsA("vtkOrientedGridTransform")
    assert slicer.util.arrayFromGridTransform(inverse_node).shape == (*moving.grid.shape, 3)
    assert inverse_node.GetAttribute("DeepRegistration.inverseOf") == forward_node.GetID()
    assert inverse_node.GetNodeReference("spatialRegistrationFixed") is moving_node
    assert inverse_node.GetNodeReference("spatialRegistrationMoving") is fixed_node
    inverse = out.figures["inverse"]
    assert not inverse["exact"] and inverse["consistency_mean_mm"] < 0.1, inverse
    pts = brain_points(fixed, 500)
    y = node_maps(forward_node, pts)
    back = node_maps(inverse_node, y)
    err = np.linalg.norm(back - pts, axis=1)
    assert err.mean() < 0.25 and np.percentile(err, 95) < 0.6, (err.mean(), err.max())
    # VTK's inverse of the forward node (Newton iterations on the grid transform): the same mapping
    to_parent = forward_node.GetTransformToParent()
    vtk_back = np.array([np.array(to_parent.TransformPoint(*(p * FLIP))) * FLIP for p in y])
    gap = np.linalg.norm(back - vtk_back, axis=1)
    assert gap.mean() < 0.25, gap.mean()
    # the fixed volume resampled by Slicer through the inverse node == the library's warp of fixed by the inverse
    resampled = slicer_resampled(scene, fixed_node, inverse_node, moving_node)
    vectors = slicer.util.arrayFromGridTransform(inverse_node).reshape(-1, 3) * FLIP
    field = dr.DisplacementField(torch.from_numpy(vectors.T.reshape(3, *moving.grid.shape).copy()).float(), moving.grid)
    library = dr.warp_image(fixed, field, moving.grid).numpy()
    inside = interior(fixed, field, moving.grid)
    assert np.abs(resampled - library)[inside].max() < 1e-3 * float(fixed.data.max())


def test_background_inverse_and_nearest(pair, oasis_t1, tmp_path):
    """The worker path: a rigid result's inverse node is the exact matrix inverse; nearest keeps the voxel values."""
    fixed, center, _ = pair
    truth = RigidTransform(np.radians([0.0, 3.0, 5.0]), [4.0, -2.0, 1.0], center=center)
    moving = make_moving(oasis_t1, truth)
    moving = moving.with_data((moving.data * 100).round().to(torch.int16))
    scene = slicer.vtkMRMLScene()
    fixed_node, moving_node = add_volume(scene, fixed, "fixed"), add_volume(scene, moving, "moving")
    inverse_node = scene.AddNewNodeByClass("vtkMRMLTransformNode", "inverse")
    warped_node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "warped")
    handle = sl.RegistrationLogic(scene).processInBackground(
        fixed_node, moving_node, "rigid", outputVolumeNode=warped_node, inverseTransformNode=inverse_node,
        interpolation="nearest", tempDirectory=str(tmp_path), **FAST)
    assert handle.wait(timeout_s=300) == "completed", handle.error or handle.log
    assert inverse_node.IsLinear() and handle.outputs.figures["inverse"]["exact"]
    forward = slicer.util.arrayFromTransformMatrix(handle.outputs.transform_node)
    np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(inverse_node) @ forward, np.eye(4), atol=1e-9)
    assert set(np.unique(slicer.util.arrayFromVolume(warped_node))) <= set(np.unique(moving.numpy())) | {0}
    assert list(tmp_path.iterdir()) == []


def test_new_outputs_refused_when_they_clash(small_scene):
    scene, fixed, fixed_node, moving_node = small_scene
    t = scene.AddNewNodeByClass("vtkMRMLTransformNode", "T")
    _refused(scene, "T: the inverse transform must be a node of its own", fixed_node, moving_node, "rigid",
             outputTransformNode=t, inverseTransformNode=t)
    _refused(scene, "interpolation 'cubic' is not one of", fixed_node, moving_node, "rigid", interpolation="cubic")
    moving_node.SetAndObserveTransformNodeID(t.GetID())
    try:
        _refused(scene, "the moving volume is under the inverse transform T", fixed_node, moving_node, "rigid",
                 inverseTransformNode=t)
    finally:
        moving_node.SetAndObserveTransformNodeID(None)


def test_worker_has_no_console_window_on_windows():
    from DeepRegistrationLib.slicer.background import worker_popen_options

    flags = worker_popen_options("nt")["creationflags"]
    assert flags & 0x08000000 and flags & 0x00000200  # CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP
    assert worker_popen_options("posix") == {"start_new_session": True}

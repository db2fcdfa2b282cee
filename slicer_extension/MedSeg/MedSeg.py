"""MedSeg: napari-medseg in 3D Slicer (segment with uncertainty, fine-tune, register MALDI/MRI, evaluate).

The four Slicer classes only. The logic is MedSegLib (MRML <-> the napari-medseg core, background
``medseg`` jobs), which runs without the application and is tested with the slicer-core wheel.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Annotated

import qt
import slicer
from MedSegLib import dependencies
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# napari_medseg.choices.DEVICE_NAMES, written out: this file loads before napari-medseg may be
# installed (MedSegLib.dependencies installs it); tests/test_choices.py checks the two are equal
DEVICES = ["auto", "cpu", "cuda", "mps"]
POLL_MS = 500
IMPORT_DIALOG_TITLES = {
    "bundle": "Choose a MONAI bundle folder (configs/, models/)",
    "nnunet": "Choose an nnU-Net v2 result folder (dataset.json, plans.json, fold_K/)",
}


class MedSeg(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["napari-medseg developers"]
        self.parent.helpText = (
            "Segment volumes with registry models (MC-dropout uncertainty, post-processing in mm), fine-tune a "
            "model on a case corrected in Segment Editor, register MALDI images to an MRI slice (UDT-SSD) and "
            "evaluate segmentations. Work runs in background 'medseg' jobs: Slicer stays responsive."
        )
        self.parent.acknowledgementText = "Built on napari-medseg, PyTorch, MONAI, SimpleITK."


@parameterNodeWrapper
class MedSegParameterNode:
    """The module's typed parameters (kept in the scene, so they are saved with it)."""

    model: str = ""
    device: Annotated[str, Choice(DEVICES)] = "auto"
    dropoutRate: Annotated[float, WithinRange(0.0, 0.95)] = 0.0
    mcSamples: Annotated[int, WithinRange(0, 200)] = 0
    tta: bool = False
    probabilities: bool = True
    uncertainty: bool = True
    openingMm: Annotated[float, WithinRange(0.0, 50.0)] = 0.0
    closingMm: Annotated[float, WithinRange(0.0, 50.0)] = 0.0
    fillHoles: bool = False
    minSizeMm3: Annotated[float, WithinRange(0.0, 1e7)] = 0.0
    keepLargest: Annotated[int, WithinRange(0, 100)] = 0
    finetuneVolume: slicer.vtkMRMLScalarVolumeNode
    finetuneSegmentation: slicer.vtkMRMLSegmentationNode
    epochs: Annotated[int, WithinRange(1, 1000)] = 20
    fixedVolume: slicer.vtkMRMLScalarVolumeNode
    fixedSlice: Annotated[int, WithinRange(-1, 10000)] = -1
    movingVolume: slicer.vtkMRMLScalarVolumeNode
    mz: float = 0.0
    tolerancePpm: float = 20.0
    levels: Annotated[int, WithinRange(1, 6)] = 3
    iterations: Annotated[int, WithinRange(1, 5000)] = 400
    predSegmentation: slicer.vtkMRMLSegmentationNode
    refSegmentation: slicer.vtkMRMLSegmentationNode
    evalVolume: slicer.vtkMRMLScalarVolumeNode


class MedSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The GUI: reads the controls, calls MedSegLib.logic, follows jobs with a QTimer."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._guiObserver = None
        self.tasks = []
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onPoll)
        self.importTask = None
        self.importTimer = qt.QTimer()
        self.importTimer.setInterval(POLL_MS)
        self.importTimer.connect("timeout()", self.onPollImport)

    # -- set-up ----------------------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.deviceComboBox.addItems(DEVICES)
        self.ui.inputVolumesSelector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        self.ui.jobsTableWidget.setHorizontalHeaderLabels(["Job", "Kind", "Status", "Progress"])
        self.ui.installButton.connect("clicked()", self.onInstall)
        self.ui.retryInstallButton.connect("clicked()", self.onInstall)
        self.ui.refreshModelsButton.connect("clicked()", self.refreshModels)
        self.ui.importBundleButton.connect("clicked()", lambda: self.onImportModel("bundle"))
        self.ui.importNnunetButton.connect("clicked()", lambda: self.onImportModel("nnunet"))
        self.ui.modelComboBox.connect("currentTextChanged(QString)", self.onModelChanged)
        self.ui.inputVolumesSelector.connect("checkedNodesChanged()", self.onModelChanged)
        self.ui.segmentButton.connect("clicked()", self.onSegment)
        self.ui.segmentEditorButton.connect("clicked()", self.onSegmentEditor)
        self.ui.finetuneButton.connect("clicked()", self.onFinetune)
        self.ui.registerButton.connect("clicked()", self.onRegister)
        self.ui.evaluateButton.connect("clicked()", self.onEvaluate)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.setParameterNode(self._getParameterNode())
        self.checkDependencies()

    def cleanup(self):
        self.timer.stop()
        self.importTimer.stop()
        if self.importTask is not None:
            self.importTask.cancel()
        self.removeObservers()
        if self._parameterNode is not None and self._guiObserver is not None:
            self._parameterNode.disconnectGui(self._guiObserver)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.setParameterNode(self._getParameterNode())

    def _getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode("MedSeg", "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "MedSeg")
            node.SetSingletonTag("MedSeg")
            node.SetModuleName("MedSeg")
        return MedSegParameterNode(node)

    def setParameterNode(self, parameterNode):
        if self._parameterNode is not None and self._guiObserver is not None:
            self._parameterNode.disconnectGui(self._guiObserver)
            self._guiObserver = None
        self._parameterNode = parameterNode
        if parameterNode is not None:
            self._guiObserver = parameterNode.connectGui(self.ui)

    # -- dependencies --------------------------------------------------------------------------------
    def checkDependencies(self):
        """Enable the module if napari-medseg and torch are installed (offline check)."""
        missing = dependencies.missing_requirements()
        ready = not missing
        self.ui.installButton.visible = bool(missing)
        self.ui.retryInstallButton.visible = False
        self.ui.dependenciesCollapsibleButton.collapsed = ready
        self.ui.dependencyStatusLabel.text = "napari-medseg and torch are installed." if ready else (
            f"On first use MedSeg installs: {', '.join(missing)} (torch through the PyTorch extension).")
        for box in ("segment", "finetune", "register", "evaluate"):
            getattr(self.ui, f"{box}CollapsibleButton").enabled = ready
        if ready and self.logic is None:
            from MedSegLib.logic import MedSegLogic

            python = shutil.which("PythonSlicer") or os.path.join(os.path.dirname(sys.executable), "PythonSlicer")
            self.logic = MedSegLogic(slicer.mrmlScene, python=python if os.path.isfile(python) else None)
            self.refreshModels()
        return ready

    def onInstall(self):
        step = "checking what is installed"
        try:
            missing = dependencies.missing_requirements()
            if dependencies.TORCH_FROM_PYTORCHUTILS in missing:
                step = "installing torch with the PyTorch extension"
                import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS)

                torchLogic = PyTorchUtils.PyTorchUtilsLogic()
                if not torchLogic.torchInstalled() and torchLogic.installTorch(askConfirmation=True) is None:
                    raise RuntimeError("torch was not installed (cancelled or failed)")
            if dependencies.DISTRIBUTION in dependencies.missing_requirements():
                step = "installing napari-medseg"
                constraints = os.path.join(tempfile.mkdtemp(prefix="medseg-"), "constraints.txt")
                with open(constraints, "w") as fh:
                    fh.write(dependencies.constraints_text())
                slicer.util.pip_install(dependencies.pip_install_args(constraints, upgrade=True))
        except Exception as exc:  # noqa: BLE001 - shown to the user with a Retry button
            self.ui.dependencyStatusLabel.text = dependencies.failure_message(
                step, exc, missing=dependencies.missing_requirements())
            self.ui.retryInstallButton.visible = True
            return
        self.checkDependencies()

    # -- models ------------------------------------------------------------------------------------
    def refreshModels(self):
        if self.logic is None:
            return
        current = self.ui.modelComboBox.currentText
        with slicer.util.tryWithErrorDisplay("Could not read the model registry.", waitCursor=True):
            names = self.logic.refresh_models()
            self.ui.modelComboBox.clear()
            self.ui.modelComboBox.addItems(names)
            if current in names:
                self.ui.modelComboBox.setCurrentText(current)

    def onImportModel(self, kind):
        """Ask for a folder and import it in a child process (the GUI stays responsive)."""
        if self.logic is None or self.importTask is not None:
            return
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), IMPORT_DIALOG_TITLES[kind])
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay("Could not start the import.", waitCursor=True):
            self.importTask = self.logic.start_import(kind, folder)
            self.ui.importBundleButton.enabled = self.ui.importNnunetButton.enabled = False
            self.ui.statusLabel.text = f"Importing {folder} (building and checking the network)..."
            self.importTimer.start()

    def onPollImport(self):
        task = self.importTask
        if task is None or self.logic.poll_import(task):
            self.importTimer.stop()
        if task is None or not task.is_final:
            return
        self.importTask = None
        self.ui.importBundleButton.enabled = self.ui.importNnunetButton.enabled = True
        if task.error is not None:  # the core's one-line reason; the registry is unchanged
            self.ui.statusLabel.text = f"Import failed: {task.error}"
            slicer.util.errorDisplay(task.error)
            return
        self.refreshModels()
        self.ui.modelComboBox.setCurrentText(task.model)
        self.ui.statusLabel.text = f"Imported model {task.model}: it is now selectable"

    def onModelChanged(self, *args):
        model = self.ui.modelComboBox.currentText
        if self.logic is None or not model:
            return
        with slicer.util.tryWithErrorDisplay("Could not read the model card.", waitCursor=False):
            self.ui.cardTextEdit.setPlainText(self.logic.describe_card(model))
            nodes = self.ui.inputVolumesSelector.checkedNodes()
            warnings = self.logic.mismatch_warnings(nodes[0], model) if nodes else []
            self.ui.mismatchLabel.text = "\n".join(f"Warning: {w}" for w in warnings)

    # -- actions -----------------------------------------------------------------------------------
    def _running(self, kind):
        return next((t for t in self.tasks if t.kind == kind and not t.is_final), None)

    def onSegment(self):
        running = self._running("predict")
        if running is not None:  # the button is Cancel while a prediction runs
            self.logic.cancel(running)
            return
        p = self._parameterNode
        postprocess = {
            "opening_mm": p.openingMm or None, "closing_mm": p.closingMm or None, "fill_holes": p.fillHoles,
            "min_size_mm3": p.minSizeMm3 or None, "keep_largest": p.keepLargest or None,
        }
        with slicer.util.tryWithErrorDisplay("Could not start the segmentation.", waitCursor=True):
            task = self.logic.start_predict(
                list(self.ui.inputVolumesSelector.checkedNodes()), self.ui.modelComboBox.currentText,
                device=p.device, mc_samples=p.mcSamples, dropout_rate=p.dropoutRate or None, tta=p.tta,
                postprocess=postprocess, probabilities=p.probabilities, uncertainty=p.uncertainty)
            self._follow(task, self.ui.segmentButton)

    def onSegmentEditor(self):
        p = self._parameterNode
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        if p.finetuneSegmentation is not None:
            editor.setSegmentationNode(p.finetuneSegmentation)
        if p.finetuneVolume is not None:
            editor.setSourceVolumeNode(p.finetuneVolume)

    def onFinetune(self):
        p = self._parameterNode
        dataset = self.ui.datasetPathLineEdit.currentPath or None
        with slicer.util.tryWithErrorDisplay("Could not start fine-tuning.", waitCursor=True):
            task = self.logic.start_finetune(p.finetuneVolume, p.finetuneSegmentation, self.ui.modelComboBox.currentText,
                                             dataset=dataset, epochs=p.epochs, device=p.device)
            self._follow(task, None)

    def onRegister(self):
        running = self._running("register")
        if running is not None:
            self.logic.cancel(running)
            return
        p = self._parameterNode
        imzml = self.ui.imzmlPathLineEdit.currentPath or None
        with slicer.util.tryWithErrorDisplay("Could not start the registration.", waitCursor=True):
            task = self.logic.start_register(
                p.fixedVolume, None if imzml else p.movingVolume, moving_imzml=imzml, mz=p.mz if imzml else None,
                tolerance_ppm=p.tolerancePpm if imzml else None, fixed_slice=None if p.fixedSlice < 0 else p.fixedSlice,
                levels=p.levels, iterations=p.iterations)
            self._follow(task, self.ui.registerButton)

    def onEvaluate(self):
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not evaluate.", waitCursor=True):
            from MedSegLib.logic import MedSegLogic

            logic = self.logic or MedSegLogic(slicer.mrmlScene)
            table = logic.evaluate(p.predSegmentation, p.refSegmentation, p.evalVolume)
            slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()

    # -- following jobs ----------------------------------------------------------------------------
    def _follow(self, task, button):
        task.button = button
        if button is not None:
            task.buttonText = button.text
            button.text = "Cancel"
        self.tasks.append(task)
        row = self.ui.jobsTableWidget.rowCount
        self.ui.jobsTableWidget.insertRow(row)
        task.row = row
        self._showTask(task)
        self.timer.start()

    def _showTask(self, task):
        values = [task.job.id, str(task.kind), str(task.status), f"{task.progress[0]}/{task.progress[1]}"]
        for column, value in enumerate(values):
            self.ui.jobsTableWidget.setItem(task.row, column, qt.QTableWidgetItem(value))
        self.ui.progressBar.value = int(100 * task.fraction)

    def onPoll(self):
        """Read new job events (no blocking), update the table, load outputs of finished jobs."""
        for task in [t for t in self.tasks if not getattr(t, "reported", False)]:
            try:
                self.logic.poll(task)
            except Exception as exc:  # noqa: BLE001 - a failed load: report it, keep polling the others
                task.error, task.reported = str(exc), True
                slicer.util.errorDisplay(f"MedSeg job {task.job.id}: {exc}")
                continue
            self._showTask(task)
            if task.is_final:
                task.reported = True
                self._finished(task)
        if all(getattr(t, "reported", False) for t in self.tasks):
            self.timer.stop()

    def _finished(self, task):
        if task.button is not None:
            task.button.text = task.buttonText
        status = str(task.status)
        if status == "done":
            message = f"{task.kind} done"
            if str(task.kind) == "finetune":
                self.refreshModels()
                message += f": model {task.outputs.get('model')} is now selectable"
        elif status == "cancelled":
            message = f"{task.kind} cancelled"
        else:
            message = f"{task.kind} failed: {task.error}"
            slicer.util.errorDisplay(message, detailedText=task.job.log_tail(40))
        self.ui.statusLabel.text = message


class MedSegTest(ScriptedLoadableModuleTest):
    """The MRML cases of tests/medseg_slicer, inside the real application.

    Run: ``Slicer --no-main-window --testing --additional-module-paths <repo>/slicer_extension/MedSeg
    --python-code "slicer.util.selectModule('MedSeg'); slicer.modules.MedSegWidget.onReload(); import MedSeg;
    MedSeg.MedSegTest().runTest()"`` (see slicer_extension/README.md).
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_volume_round_trip()
        self.setUp()
        self.test_segmentation_and_metrics()
        self.setUp()
        self.test_transform()
        if not dependencies.missing_requirements():
            self.setUp()
            self.test_predict_job()

    def test_volume_round_trip(self):
        import numpy as np
        from MedSegLib import nodes

        from napari_medseg.volume import Geometry, Volume

        geometry = Geometry((0.7, 0.9, 2.5), (10.5, -20.25, 33.125), (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
        volume = Volume(np.arange(120, dtype=np.int32).reshape(4, 5, 6) * 10**7, geometry)
        back = nodes.volume_from_node(nodes.volume_to_node(volume, slicer.mrmlScene, name="round trip"))
        self.assertTrue(np.array_equal(back.array, volume.array))
        self.assertEqual(back.geometry, geometry)
        self.delayDisplay("volume round trip: exact")

    def test_segmentation_and_metrics(self):
        import numpy as np
        from MedSegLib import nodes

        from napari_medseg.metrics import evaluate
        from napari_medseg.volume import Geometry, Volume

        geometry = Geometry((1.0, 1.0, 2.0), (1.0, 2.0, 3.0))
        pred = np.zeros((6, 16, 16), np.uint8)
        pred[1:5, 3:12, 4:12] = 1
        ref = np.roll(pred, 1, axis=1)
        a = nodes.labels_to_segmentation(Volume(pred, geometry), slicer.mrmlScene, label_specs={1: ("liver", (1, 0, 0))})
        b = nodes.labels_to_segmentation(Volume(ref, geometry), slicer.mrmlScene, label_specs={1: ("liver", (1, 0, 0))})
        self.assertTrue(np.array_equal(nodes.segmentation_to_labels(a, Volume(pred, geometry)).array, pred))
        image = nodes.volume_to_node(Volume(pred.astype(np.float32), geometry), slicer.mrmlScene)
        from MedSegLib.logic import MedSegLogic

        table = MedSegLogic(slicer.mrmlScene).evaluate(a, b, image).GetTable()
        expected = evaluate(Volume(pred, geometry), Volume(ref, geometry))["labels"]["1"]["dice"]
        self.assertAlmostEqual(table.GetValueByName(0, "dice").ToDouble(), expected, places=12)
        self.delayDisplay("segmentation and metrics table: ok")

    def test_transform(self):
        import numpy as np
        from MedSegLib import nodes

        from napari_medseg.volume import Geometry, Volume

        field = np.zeros((3, 8, 8, 3), np.float32)
        field[..., 0] = 1.5  # 1.5 mm along LPS x = -1.5 mm along RAS x
        node = nodes.field_to_grid_transform(Volume(field, Geometry()), slicer.mrmlScene)
        moved = node.GetTransformFromParent().TransformPoint(-3.0, -3.0, 1.0)
        self.assertTrue(np.allclose(moved, (-4.5, -3.0, 1.0), atol=1e-6))
        self.delayDisplay("grid transform: ok")

    def test_predict_job(self):
        """A real job with a random-weight tiny model in a temporary registry."""
        import numpy as np
        from MedSegLib import nodes
        from MedSegLib.logic import MedSegLogic

        from napari_medseg.networks import build_network
        from napari_medseg.registry import Registry, save_model_folder
        from napari_medseg.volume import Geometry, Volume

        folder = tempfile.mkdtemp(prefix="medseg-test-")
        net = build_network("unet", spatial_dims=3, in_channels=1, out_channels=2, channels=[4, 8])
        card = {"name": "slicer-test", "version": "1.0", "description": "test", "task": "segmentation",
                "license": "Apache-2.0", "architecture": {"name": "unet", "params": {"channels": [4, 8]}},
                "spatial_dims": 3, "channels": [{"name": "T1", "modality": "MR"}],
                "labels": {0: {"name": "background", "color": (0, 0, 0)}, 1: {"name": "lesion", "color": (1, 0, 0)}},
                "normalization": {"kind": "zscore"}, "patch_size": (8, 16, 16)}
        save_model_folder(os.path.join(folder, "slicer-test"), card=card, state_dict=net.state_dict())
        logic = MedSegLogic(slicer.mrmlScene, registry=Registry([folder]), env={"MEDSEG_MODELS": folder},
                            python=shutil.which("PythonSlicer"))
        node = nodes.volume_to_node(Volume(np.random.default_rng(0).normal(size=(8, 20, 20)).astype(np.float32),
                                           Geometry((1.0, 1.0, 2.0))), slicer.mrmlScene, name="input")
        task = logic.start_predict(node, "slicer-test", device="cpu", mc_samples=2)
        self.assertEqual(str(logic.wait(task, timeout_s=300)), "done", task.job.log_tail(20))
        seg = task.outputs["segmentation"].GetSegmentation()
        self.assertEqual(seg.GetSegment("label_1").GetName(), "lesion")
        self.assertEqual(sorted(task.outputs["uncertainty"]), ["entropy", "mutual_information", "variance_background", "variance_lesion"])
        self.delayDisplay("predict job: ok")

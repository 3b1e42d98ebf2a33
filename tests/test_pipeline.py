"""End to end: joint pre-training on two data sets -> fine-tuning on a third -> ASE calculator
predicts the held-out slice better than the same model before fine-tuning."""
import ase.io
import numpy as np

from jmp_ase.calculators.calculator import JMPCalculator
from jmp_ase.io.model_file import save_model
from models import emt_clusters
from test_pretrain import pretrain_config, write_datasets
from jmp_ase.training.finetune import FinetuneConfig, build_model, make_datasets, run_finetune


def mean_force_error(calc, structures):
    errors = []
    for atoms in structures:
        label = atoms.get_forces()
        atoms = atoms.copy()
        atoms.calc = calc
        errors.append(np.linalg.norm(atoms.get_forces() - label, axis=1).mean())
    return float(np.mean(errors))


def test_pretrain_then_finetune_beats_untrained(tmp_path):
    from jmp_ase.training.pretrain import run_pretrain

    (tmp_path / "pre").mkdir()
    pretrained = run_pretrain(pretrain_config(write_datasets(tmp_path / "pre"), tmp_path / "pre-run", max_steps=4))
    ase.io.write(tmp_path / "train.extxyz", emt_clusters(16, 0, gap=False))
    ase.io.write(tmp_path / "val.extxyz", emt_clusters(6, 1, gap=False))
    test = emt_clusters(6, 2, gap=False)
    settings = dict(pretrained=str(pretrained), train=str(tmp_path / "train.extxyz"),
                    val=str(tmp_path / "val.extxyz"), cutoff=4.0, max_neighbors=8, batch_size=4, lr=3e-3,
                    warmup_epochs=0.5, cosine_epochs=20, max_epochs=20, ema_decay=0.5, progress=False,
                    accelerator="cpu", out=str(tmp_path / "ft"))
    run_finetune(settings)

    untrained_path = tmp_path / "untrained.ckpt"
    config = FinetuneConfig(**settings)
    save_model(build_model(config, make_datasets(config)["train"])[0], untrained_path)
    before = mean_force_error(JMPCalculator(str(untrained_path)), test)
    after = mean_force_error(JMPCalculator(str(tmp_path / "ft" / "model.ckpt")), test)
    assert after < 0.85 * before, (before, after)  # mean |F error| in eV/Å, 6 unseen clusters

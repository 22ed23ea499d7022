"""
Registries for what detectron2 has none for. Config keys pick components from them by name,
so a method adds files, not branches in shared code.
"""
from fvcore.common.registry import Registry

MAPPER_REGISTRY = Registry("DETPRE_MAPPER")
MAPPER_REGISTRY.__doc__ = """
Dataset mappers: ``cls(cfg, is_train)`` (``@configurable``) turning one dataset dict into what
a meta-arch's ``forward`` takes. Picked by ``DATALOADER.MAPPER`` or the meta-arch's declaration.
"""

HOOK_REGISTRY = Registry("DETPRE_HOOK")
HOOK_REGISTRY.__doc__ = """
Training hooks: ``build(cfg, trainer) -> HookBase``. Appended to detectron2's default hooks
for each name in ``DETPRE.HOOKS`` and each the meta-architecture declares (``detpre.method``).
"""

TRAINER_REGISTRY = Registry("DETPRE_TRAINER")
TRAINER_REGISTRY.__doc__ = """
Trainers other than ``detpre.engine.Trainer`` (e.g. the self-training student): a
``DefaultTrainer`` subclass with a classmethod ``applies_to(cfg) -> bool``. ``tools/train_net.py``
uses the one registered trainer that applies to the config, else ``Trainer``.
"""

EVALUATOR_REGISTRY = Registry("DETPRE_EVALUATOR")
EVALUATOR_REGISTRY.__doc__ = """
``build(cfg, dataset_name, output_folder) -> DatasetEvaluator``, keyed by a data set's
``MetadataCatalog`` ``evaluator_type`` ("coco", "pascal_voc", "reid", ...).
"""

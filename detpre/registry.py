"""
Registries for what detectron2 has none for. Config keys pick components from them by name,
so a method adds files, not branches in shared code.
"""
from fvcore.common.registry import Registry

MAPPER_REGISTRY = Registry("DETPRE_MAPPER")
MAPPER_REGISTRY.__doc__ = """
Dataset mappers: ``cls(cfg, is_train)`` (``@configurable``) turning one dataset dict into what
a meta-arch's ``forward`` takes. Picked by ``DATALOADER.MAPPER``.
"""

HOOK_REGISTRY = Registry("DETPRE_HOOK")
HOOK_REGISTRY.__doc__ = """
Training hooks: ``build(cfg, trainer) -> HookBase``. Appended to detectron2's default hooks
for each name in ``DETPRE.HOOKS``.
"""

LOSS_REGISTRY = Registry("DETPRE_LOSS")
LOSS_REGISTRY.__doc__ = "Self-supervised losses (nn.Module), picked by method config keys."

MEMORY_REGISTRY = Registry("DETPRE_MEMORY")
MEMORY_REGISTRY.__doc__ = "Feature memories (e.g. SpCL's HybridMemory)."

EVALUATOR_REGISTRY = Registry("DETPRE_EVALUATOR")
EVALUATOR_REGISTRY.__doc__ = """
``build(cfg, dataset_name, output_folder) -> DatasetEvaluator``, keyed by a data set's
``MetadataCatalog`` ``evaluator_type`` ("coco", "pascal_voc", "reid", ...).
"""

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator

from detpre._compat import coco_evaluator_kwargs
from detpre.registry import EVALUATOR_REGISTRY


# registered under the evaluator_type they serve (the function name)
@EVALUATOR_REGISTRY.register()
def coco(cfg, dataset_name, output_folder):
    return COCOEvaluator(dataset_name, output_dir=output_folder, **coco_evaluator_kwargs())


@EVALUATOR_REGISTRY.register()
def pascal_voc(cfg, dataset_name, output_folder):
    return PascalVOCDetectionEvaluator(dataset_name)


def build_evaluator(cfg, dataset_name, output_folder):
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in EVALUATOR_REGISTRY:
        raise NotImplementedError(
            f"No evaluator for data set '{dataset_name}' (evaluator_type={evaluator_type!r}); "
            f"registered types: {sorted(k for k, _ in EVALUATOR_REGISTRY)}. Remove it from "
            "DATASETS.TEST or register one in detpre.registry.EVALUATOR_REGISTRY."
        )
    return EVALUATOR_REGISTRY.get(evaluator_type)(cfg, dataset_name, output_folder)

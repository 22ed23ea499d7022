from .views import (
    BYOL_VIEW1,
    BYOL_VIEW2,
    MOCOV2_VIEW,
    TWO_VIEW_RECIPES,
    ColorJitterTransform,
    GaussianBlurTransform,
    GrayscaleTransform,
    RandomColorJitter,
    RandomGaussianBlur,
    RandomGrayscale,
    RandomSolarize,
    SolarizeTransform,
    build_view_augmentations,
)

__all__ = [k for k in dir() if not k.startswith("_")]

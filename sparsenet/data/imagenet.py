"""ImageNet (ILSVRC-2012) or any ImageFolder tree laid out like it.

`<root>/train/<class>/*.JPEG` and `<root>/val/<class>/*.JPEG` (the validation images sorted
into class folders, as torchvision's reference scripts expect). It cannot be downloaded
automatically: the licence needs a login at image-net.org.

Preprocessing is the standard one of torchvision's reference training (Inception-style
RandomResizedCrop + horizontal flip for training; resize the short side to image_size / 0.875,
i.e. 256 for 224, then a centre crop for testing), normalised with the ImageNet training-set
statistics (mean 0.485 0.456 0.406, std 0.229 0.224 0.225). num_classes is the number of class
folders, so a smaller tree (an ImageNet subset, Imagenette) works unchanged.
"""

from __future__ import annotations

from pathlib import Path

from torchvision import transforms

from sparsenet.data import DataSplits, register_dataset
from sparsenet.data._common import check_format, load_imagefolder_pair, normalize, take_subset

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CROP_FRACTION = 0.875  # 224 / 256


@register_dataset("imagenet")
def imagenet(
    root: str,
    download: bool = False,
    format: str = "imagefolder",
    train_subset: int | None = None,
    test_subset: int | None = None,
    augment: bool = True,
    image_size: int = 224,
) -> DataSplits:
    """ImageNet-style ImageFolder tree; subsets take N evenly spaced samples (every class kept)."""
    check_format(format, ("imagefolder",), "imagenet")
    test_tf = transforms.Compose(
        [transforms.Resize(round(image_size / CROP_FRACTION)), transforms.CenterCrop(image_size)]
        + normalize(MEAN, STD)
    )
    if augment:
        train_tf = transforms.Compose(
            [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
            + normalize(MEAN, STD)
        )
    else:
        train_tf = test_tf
    # download is accepted so every dataset config has the same keys, but there is nothing to
    # fetch; the missing-data message says so.
    train, test = load_imagefolder_pair(
        "imagenet",
        Path(root),
        ("train", "val"),
        (train_tf, test_tf),
        download_hint="ImageNet cannot be downloaded automatically (dataset.download does not "
        "apply): get ILSVRC-2012 from image-net.org and sort train/ and val/ into class folders",
        default_subfolder="/imagenet",
    )
    return DataSplits(
        train=take_subset(train, train_subset, "train_subset", spread=True),
        test=take_subset(test, test_subset, "test_subset", spread=True),
        num_classes=len(train.classes),
        input_shape=(3, image_size, image_size),
        in_memory=False,
    )

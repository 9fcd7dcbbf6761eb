""" Datasets as uint8 tensors and the device-resident loader with its CIFAR augmentation. """
import numpy as np
import pytest
import torch
from PIL import Image

from awnet_timm.data import DatasetError, DeviceLoader, ImageTensors, load_dataset, random_crop_flip


def _images(n=10, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImageTensors(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                        torch.arange(n) % 3, ('a', 'b', 'c'))


def test_random_crop_flip_matches_a_per_sample_reference():
    x = _images(16).images
    out = random_crop_flip(x, pad=4, flip=True, generator=torch.Generator().manual_seed(1))
    # replay the same random draws, one image at a time, the way torchvision's RandomCrop(padding=4) + flip read
    g = torch.Generator().manual_seed(1)
    dy, dx = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    mirror = torch.rand(16, generator=g) < 0.5
    for i in range(16):
        padded = torch.zeros(3, 16, 16, dtype=torch.uint8)
        padded[:, 4:12, 4:12] = x[i]
        ref = padded[:, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        if mirror[i]:
            ref = ref.flip(2)
        assert torch.equal(out[i], ref)


def test_augmentation_can_be_turned_off():
    x = _images().images
    assert torch.equal(random_crop_flip(x, pad=0, flip=False), x)


def test_train_batches_depend_only_on_seed_and_epoch():
    data = _images(40)

    def epoch(seed, e):
        loader = DeviceLoader(data, 8, 'cpu', train=True, seed=seed)
        loader.set_epoch(e)
        return [(x.clone(), y.clone()) for x, y in loader]

    a, b, c = epoch(0, 3), epoch(0, 3), epoch(0, 4)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, c))
    x, _ = a[0]
    assert x.dtype == torch.float32 and x.shape == (8, 3, 8, 8) and 0 <= x.min() and x.max() <= 1


def test_ranks_take_disjoint_shards_that_cover_the_data():
    data = ImageTensors(torch.zeros(30, 3, 4, 4, dtype=torch.uint8), torch.arange(30), ('x',))
    seen = []
    for rank in range(3):
        loader = DeviceLoader(data, 5, 'cpu', train=True, rank=rank, world_size=3, pad=0, flip=False)
        assert len(loader) == 2
        seen += [y for _, ys in loader for y in ys.tolist()]
    assert sorted(seen) == list(range(30))
    eval_seen = []
    for rank in range(4):  # eval: uneven shards, nothing dropped
        eval_seen += [y for _, ys in DeviceLoader(data, 4, 'cpu', train=False, rank=rank, world_size=4) for y in ys.tolist()]
    assert sorted(eval_seen) == list(range(30))


def test_eval_batches_keep_order_and_pixels():
    data = _images(10)
    xs, ys = zip(*DeviceLoader(data, 4, 'cpu', train=False))
    assert torch.equal(torch.cat(ys), data.labels)
    assert torch.equal((torch.cat(xs) * 255).round().to(torch.uint8), data.images)


def test_loader_rejects_float_images_and_tiny_datasets():
    with pytest.raises(ValueError, match='uint8'):
        DeviceLoader(ImageTensors(torch.zeros(4, 3, 4, 4), torch.zeros(4, dtype=torch.long), ('x',)), 2, 'cpu', True)
    with pytest.raises(ValueError, match='fewer than one batch'):
        DeviceLoader(_images(4), 8, 'cpu', train=True)


def write_imagefolder(root, split, n_per_class=3, size=12, classes=('cat', 'dog')):
    for c, name in enumerate(classes):
        folder = root / split / name
        folder.mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(np.full((size, size, 3), 40 * c + i, np.uint8)).save(folder / f'{i}.png')


def test_imagefolder_loads_as_uint8_and_resizes(tmp_path):
    write_imagefolder(tmp_path, 'train')
    data = load_dataset('imagefolder', str(tmp_path), 'train')
    assert data.images.shape == (6, 3, 12, 12) and data.images.dtype == torch.uint8
    assert data.classes == ('cat', 'dog') and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.images[4].unique().tolist() == [41]
    assert load_dataset('imagefolder', str(tmp_path), 'train', img_size=20).images.shape == (6, 3, 20, 20)


def test_offline_cifar10_as_tensors(cifar10_root):
    data = load_dataset('cifar10-offline', cifar10_root, 'test-exact', limit=5)
    assert data.images.shape == (5, 3, 32, 32) and data.classes[0] == 'airplane'


def test_missing_datasets_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no 'val' folder"):
        write_imagefolder(tmp_path, 'train')
        load_dataset('imagefolder', str(tmp_path), 'val')
    with pytest.raises(FileNotFoundError, match='--download'):
        load_dataset('cifar10', str(tmp_path / 'nothing'), 'train')
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset('mnist', str(tmp_path))
    with pytest.raises(ValueError, match='needs a root'):
        load_dataset('cifar10-offline', '')


def test_imagefolder_decodes_in_the_models_channel_count(tmp_path):
    write_imagefolder(tmp_path, 'train')
    gray = load_dataset('imagefolder', str(tmp_path), 'train', in_chans=1)
    assert gray.images.shape == (6, 1, 12, 12) and gray.images[4].unique().tolist() == [41]  # L of a gray RGB pixel
    with pytest.raises(DatasetError, match='in_chans=2'):
        load_dataset('imagefolder', str(tmp_path), 'train', in_chans=2)
    with pytest.raises(DatasetError, match="'cifar10' gives RGB images .* in_chans=1"):
        load_dataset('cifar10', str(tmp_path), 'train', in_chans=1)


def test_an_unreadable_image_stops_the_load_naming_the_file(tmp_path):
    write_imagefolder(tmp_path, 'train')
    broken = tmp_path / 'train' / 'dog' / 'broken.png'
    broken.write_bytes(b'\x89PNG\r\n\x1a\n not really')
    with pytest.raises(DatasetError, match=f"'{broken}' is not an image PIL can read .*the run stops, no image is skipped"):
        load_dataset('imagefolder', str(tmp_path), 'train')


def test_a_val_split_of_other_classes_than_train_is_refused(tmp_path):
    from awnet_timm.training import train
    from awnet_timm.training.config import ConfigError
    from conftest import TINY, tiny_config
    write_imagefolder(tmp_path / 'data', 'train', classes=('a', 'b'))
    write_imagefolder(tmp_path / 'data', 'val', classes=('a', 'z'))
    cfg = tiny_config(str(tmp_path / 'data'), tmp_path / 'out', model='cifar_resnet18', model_kwargs=TINY,
                      recipe='standard', train_size=6, val_size=6, batch_size=2, img_size=12)
    with pytest.raises(ConfigError, match=r"the val split's classes \['a', 'z'\] are not the train split's \['a', 'b'\]"):
        train(cfg)

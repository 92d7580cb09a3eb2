"""Nonsense pairings of model and data are refused or warned about, never scored silently."""
import warnings

import pytest
import torch

import chanprune
from chanprune.errors import ConfigError


def _model(classes=10):
    return chanprune.create_model("lenet5", num_classes=classes, in_channels=1).eval()


def _data(classes, name="tensors"):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 1, 28, 28, generator=g), torch.arange(20) % classes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one-class data warns on its own; tested in test_tensors
        return chanprune.from_tensors((x, torch.arange(20) % 2), (x, y), name=name)


def test_ten_class_model_on_one_class_split_warns():
    with pytest.warns(UserWarning, match="holds images of 1 class but the model predicts 10"):
        chanprune.evaluate(_model(), _data(1))


def test_model_used_on_another_data_set_than_its_record_names_warns():
    model = _model()
    model.chanprune_extra = {"data": "mnist"}
    with pytest.warns(UserWarning, match=r"trained on 'mnist'.*pass data='mnist'"):
        chanprune.evaluate(model, _data(10, name="fashion_mnist"))


def test_matching_data_is_quiet():
    model = _model()
    model.chanprune_extra = {"data": "tensors"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chanprune.evaluate(model, _data(10))


def test_fewer_outputs_than_classes_refused():
    with pytest.raises(ConfigError, match="has 4 classes but data set 'tensors' has 10"):
        chanprune.evaluate(_model(4), _data(10))


def test_no_test_split_says_how_to_give_one():
    x = torch.randn(8, 1, 28, 28)
    data = chanprune.from_tensors((x, torch.arange(8) % 2))
    with pytest.raises(ConfigError, match=r"no test images.*test=\(images, labels\)"):
        chanprune.evaluate(_model(), data)

"""Segmentation scores: one confusion matrix over the whole set, checked against hand computation."""
import math

import numpy as np
import pytest
from basicsr.metrics import calculate_metric

from fusion.metrics.segmentation_metrics import (class_iou, confusion_matrix, mean_iou, pixel_accuracy,
                                                 segmentation_scores)


def _example():
    # two 2x3 "images", 4 classes (3 never appears anywhere), 255 = ignore
    label = np.array([[[0, 0, 1], [1, 2, 255]],
                      [[0, 0, 0], [2, 2, 1]]])
    pred = np.array([[[0, 1, 1], [1, 2, 0]],
                     [[0, 0, 2], [2, 0, 1]]])
    return pred, label


def test_confusion_matrix_by_hand():
    pred, label = _example()
    cm = confusion_matrix(pred, label, num_classes=4, ignore_index=255)
    # rows = label, columns = prediction; the ignored pixel (label 255, pred 0) is not counted
    expected = np.array([[3, 1, 1, 0],
                         [0, 3, 0, 0],
                         [1, 0, 2, 0],
                         [0, 0, 0, 0]])
    np.testing.assert_array_equal(cm, expected)
    # accumulating per image gives the same matrix as the whole set at once
    per_image = sum(confusion_matrix(p, lab, 4, 255) for p, lab in zip(pred, label))
    np.testing.assert_array_equal(per_image, cm)


def test_iou_miou_pixel_accuracy_by_hand():
    pred, label = _example()
    cm = confusion_matrix(pred, label, 4, 255)
    iou = class_iou(cm)
    # class 0: TP 3, FP 1 (label 2 -> 0), FN 2 (-> 1, -> 2): 3/6; class 1: TP 3, FP 1, FN 0: 3/4;
    # class 2: TP 2, FP 1, FN 1: 2/4; class 3: never labelled nor predicted -> undefined (NaN)
    np.testing.assert_allclose(iou[:3], [3 / 6, 3 / 4, 2 / 4])
    assert math.isnan(iou[3])
    assert mean_iou(cm) == pytest.approx((0.5 + 0.75 + 0.5) / 3)          # absent class left out
    assert mean_iou(cm, include_background=False) == pytest.approx((0.75 + 0.5) / 2)
    assert pixel_accuracy(cm) == pytest.approx(8 / 11)
    scores = segmentation_scores(cm, ['bg', 'car', 'person', 'bump'])
    assert scores['per_class_iou']['car'] == pytest.approx(0.75)
    assert scores['label_pixels'] == {'bg': 5, 'car': 3, 'person': 3, 'bump': 0}


def test_whole_set_miou_differs_from_mean_of_per_image_ious():
    pred, label = _example()
    whole = mean_iou(confusion_matrix(pred, label, 4, 255))
    per_image = np.mean([mean_iou(confusion_matrix(p, lab, 4, 255)) for p, lab in zip(pred, label)])
    assert whole != pytest.approx(per_image)


def test_predicted_but_never_labelled_class_counts_as_zero():
    label = np.zeros((2, 2), int)
    pred = np.array([[0, 0], [0, 1]])
    cm = confusion_matrix(pred, label, 3, None)
    iou = class_iou(cm)
    assert iou[1] == 0.0 and math.isnan(iou[2])
    assert mean_iou(cm) == pytest.approx((3 / 4 + 0.0) / 2)


def test_registered_metrics_in_basicsr_validation():
    pred, label = _example()
    cm = confusion_matrix(pred, label, 4, 255)
    assert calculate_metric({'confusion_matrix': cm}, {'type': 'calculate_seg_miou'}) == pytest.approx(1.75 / 3)
    assert calculate_metric({'confusion_matrix': cm}, {'type': 'calculate_seg_miou', 'include_background': False}) \
        == pytest.approx(0.625)
    assert calculate_metric({'confusion_matrix': cm}, {'type': 'calculate_seg_pixel_acc'}) == pytest.approx(8 / 11)


def test_bad_label_values_are_refused():
    with pytest.raises(ValueError, match=r'\[0, 4\)'):
        confusion_matrix(np.zeros((2, 2), int), np.array([[0, 7], [0, 0]]), 4, 255)

"""The signal signal's pure logic (app/catalog/signals.py): what a term is, how it is weighed, and
that the exact string a report names wins over the words it shares with a neighbouring playbook."""

import math

import pytest

from app.catalog import signals
from app.catalog.signals import SignalIndex, analyse, playbook_fields, quoted, terms


def index_of(*playbooks: dict) -> SignalIndex:
    return SignalIndex(
        playbook_fields(p.get("name", ""), p.get("description", ""), p.get("labels", {}), p.get("content", ""))
        for p in playbooks
    )


def test_words_split_camel_case_and_drop_a_plural_s():
    segments, identifiers = analyse("Back-off pulling image: ImagePullBackOff, 3 Insufficient nvidia.com/gpu")
    assert segments == [["back", "off", "pulling", "image"], ["image", "pull", "back", "off"],
                        ["3", "insufficient", "nvidia", "com", "gpu"]]
    # Identifiers are kept whole, as the phrase of their parts.
    assert identifiers == {"image pull back off", "nvidia com gpu"}
    assert analyse("too many open files")[0] == [["too", "many", "open", "file"]]
    assert analyse("OOMKilled x509 SIGSEGV")[1] == {"oom killed", "x509", "sigsegv"}
    # Numbers, quantities and ratios are not identifiers: an identifier starts with a letter.
    assert analyse("0/10 nodes, 500m cpu, 3a57")[1] == set()


def test_phrases_neither_start_nor_end_with_a_stop_word_except_a_leading_negation():
    found = terms("write failed: no space left on device")
    assert {"write failed", "no space", "no space left", "space left on device"} <= found
    assert not any(term.split()[-1] in signals.STOP_WORDS for term in found)
    assert "left on" not in found and "on device" not in found
    # Phrases stay inside a segment: a comma, a colon or a new line ends it.
    assert "failed no" not in found and "device next" not in terms("left on device\nnext step")


def test_quoted_spans_are_where_prose_names_exact_strings():
    text = 'Events such as "Insufficient cpu", then `kubectl get events | grep -i \'exceeded quota\'`; don\'t guess'
    assert quoted(text).splitlines() == ["Insufficient cpu", "kubectl get events | grep -i 'exceeded quota'"]
    # In prose only identifiers and the phrases of quoted spans are terms; a name's every phrase is.
    index = index_of({"name": "Pods stuck waiting", "description": text + " and untolerated taints"})
    assert "insufficient cpu" in index.postings and "exceeded quota" in index.postings
    assert "pod stuck waiting" in index.postings and "untolerated taint" not in index.postings


def test_a_term_only_one_playbook_has_weighs_one_a_shared_one_less_and_a_common_one_nothing():
    filler = [{"name": f"topic {n}", "description": "a `kubectl describe pod` away"} for n in range(10)]
    index = index_of({"name": "disk full", "description": "`no space left on device`"},
                     {"name": "log volume", "description": "node runs out: `no space left on device`"},
                     {"name": "gpu lost", "description": "`nvidia.com/gpu` allocatable is 0"}, *filler)
    rows = index.rows
    unit = math.log(1 + (rows - 0.5) / 1.5)
    at, weight = index.postings["nvidia com gpu"]
    assert at.tolist() == [2] and weight.tolist() == pytest.approx([1.0])
    at, weight = index.postings["space left on device"]
    assert at.tolist() == [0, 1] and weight.tolist() == pytest.approx([math.log(1 + 11.5 / 2.5) / unit] * 2)
    assert "kubectl describe pod" not in index.postings  # 10 of 13 playbooks: no evidence for any


def test_content_counts_half_and_a_term_counts_once_at_its_best_field():
    index = index_of({"name": "DiskPressure evictions", "content": "Look for `DiskPressure` in the events"},
                     {"name": "other"})
    assert index.postings["disk pressure"][1].tolist() == pytest.approx([1.0])
    index = index_of({"name": "cleanup", "content": "Look for `DiskPressure` in the events"}, {"name": "other"})
    assert index.postings["disk pressure"][1].tolist() == pytest.approx([signals.FIELD_WEIGHTS["content"]])
    # A single word, even quoted, is the text signal's business: `Error` is no signal.
    assert "error" not in index_of({"name": "x", "content": "if the reason is `Error`, stop"}).postings


def test_only_the_longest_matches_count():
    index = index_of({"name": "disk", "description": "`No space left on device`"}, {"name": "other"})
    found = index.score("java.io.IOException: No space left on device (errno 28)")
    # Two overlapping phrases cover the five words; none of the shorter ones inside them counts.
    assert found.matched_terms(0) == ["space left on device", "no space left"]
    assert found.score.tolist() == pytest.approx([2.0, 0.0])
    assert found.matched_terms(1) == []


def test_the_exact_resource_a_report_names_is_the_evidence_not_the_words_around_it():
    scheduling = {"name": "Pods Pending on FailedScheduling",
                  "description": 'Events such as "Insufficient cpu", "Insufficient memory" or "0/5 nodes are available"',
                  "labels": {"signal_type": "FailedScheduling"}}
    gpu = {"name": "GPU node failure", "labels": {"signal_type": "GPUUnavailable"},
           "description": "GPU workloads stay Pending because `nvidia.com/gpu` allocatable dropped to zero; "
                          'the scheduler says "Insufficient nvidia.com/gpu"'}
    quota = {"name": "ResourceQuota exceeded", "labels": {"signal_type": "QuotaExceeded"},
             "description": 'Pods are rejected with "exceeded quota" when the namespace budget is used up'}
    index = index_of(scheduling, gpu, quota, *({"name": f"filler {n}"} for n in range(6)))
    found = index.score("training pods stay pending, the scheduler says 4 Insufficient nvidia.com/gpu")
    assert found.score.argmax() == 1 and found.score[0] == 0
    assert found.matched_terms(1) == ["insufficient nvidia com gpu"]
    # Both the reason and the resource named: each playbook gets what it shares; the fusion with
    # the other signals decides (app/catalog/search.py).
    found = index.score("Warning FailedScheduling 0/10 nodes are available: 4 Insufficient nvidia.com/gpu.")
    assert found.matched_terms(0) == ["node are available", "failed scheduling"]
    assert found.matched_terms(1) == ["insufficient nvidia com gpu"]
    quota_report = 'Error creating: pods "web-7" is forbidden: exceeded quota: compute, requested: cpu=2'
    found = index.score(quota_report)
    assert found.score.argmax() == 2 and found.matched_terms(2) == ["exceeded quota"]


def test_a_report_sharing_nothing_scores_zero():
    index = index_of({"name": "OOMKilled recovery", "labels": {"signal_type": "OOMKilled"}}, {"name": "other"})
    found = index.score("the office coffee machine is out of order again")
    assert found.score.tolist() == [0.0, 0.0] and found.counted == []
    assert index_of().score("OOMKilled").score.tolist() == []

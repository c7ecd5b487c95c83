"""`verify -o junit`: a test suite per namespace; a test case per explained pod and flow type, one "read pod"
case for a pod that could not be read (an error) or has nothing to check (skipped)."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from unit.test_render_diagrams import verify_report

from podnat.render.junit import verify_junit


def test_one_case_per_flow_type_of_an_explained_pod_and_one_for_a_pod_not_explained() -> None:
    text = verify_junit(verify_report())
    assert text.startswith("<?xml version='1.0' encoding='utf-8'?>\n<testsuites")
    root = ET.fromstring(text)
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == ["bookinfo", "kube-system"]
    assert {k: suites["bookinfo"].get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "13",  # 6 flow types for each of two explained pods, one case for the pod not read
        "failures": "2",
        "errors": "1",
        "skipped": "0",
    }
    cases = {(c.get("classname"), c.get("name")): c for c in suites["bookinfo"].findall("testcase")}
    failed = sorted(name for (pod, name), case in cases.items() if case.find("failure") is not None)
    assert failed == ["type 2: local pod -> remote pod", "type 4: local pod -> local pod (via its own Service)"]
    failure = cases[("bookinfo/reviews-v1", "type 2: local pod -> remote pod")].find("failure")
    assert failure is not None and failure.get("message", "").startswith("broken: type 2 (local pod -> remote pod)")
    error = cases[("bookinfo/details-v1", "read pod")].find("error")
    assert error is not None and error.get("message") == "istio-proxy cannot read the nat table without NET_ADMIN"
    (skipped,) = suites["kube-system"].findall("testcase")
    assert skipped.find("skipped") is not None and skipped.find("skipped").get("message") == "not checked: none"

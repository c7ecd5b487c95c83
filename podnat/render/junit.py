"""`podnat verify -o junit`: one test case per pod and flow type, for CI dashboards."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from podnat._typing import assert_never
from podnat.istio.explain import FlowStatus
from podnat.istio.flows import FLOW_TITLES
from podnat.report import Explained, Failed, Relayed, Skipped, VerifyReport


def verify_junit(report: VerifyReport) -> str:
    suites = ET.Element("testsuites", name="podnat verify")
    by_namespace: dict[str, ET.Element] = {}
    for pod in report.pods:
        suite = by_namespace.get(pod.ref.namespace)
        if suite is None:
            suite = by_namespace[pod.ref.namespace] = ET.SubElement(suites, "testsuite", name=pod.ref.namespace)
        match pod:
            case Explained() | Relayed():
                _flow_cases(suite, pod)
            case Skipped():
                case = ET.SubElement(suite, "testcase", classname=str(pod.ref), name="read pod")
                ET.SubElement(case, "skipped", message=f"not checked: {pod.mesh}")
            case Failed():
                case = ET.SubElement(suite, "testcase", classname=str(pod.ref), name="read pod")
                ET.SubElement(case, "error", message=pod.error).text = pod.error
            case _:
                assert_never(pod)
    for suite in suites:
        cases = suite.findall("testcase")
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
        suite.set("errors", str(sum(1 for c in cases if c.find("error") is not None)))
        suite.set("skipped", str(sum(1 for c in cases if c.find("skipped") is not None)))
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _flow_cases(suite: ET.Element, pod: Explained | Relayed) -> None:
    """One test case per flow type of an explained pod (its first family's flows)."""
    worst = pod.flow_statuses
    for flow_type, status in sorted(worst.items()):
        case = ET.SubElement(
            suite, "testcase", classname=str(pod.ref), name=f"type {int(flow_type)}: {FLOW_TITLES[flow_type]}"
        )
        if status in (FlowStatus.DRIFT, FlowStatus.BROKEN):
            messages = [f.message for f in pod.findings if int(flow_type) in f.flow_types]
            summary = f"{status.value}: " + (messages[0] if messages else "")
            failure = ET.SubElement(case, "failure", message=summary)
            failure.text = "\n".join(messages)
        elif status is FlowStatus.UNKNOWN:
            ET.SubElement(case, "skipped", message="podnat cannot decide this path")

"""The deployment files are checked, not only shown: the systemd unit with
`systemd-analyze verify`, the Kubernetes manifests with `kubernetes-validate`, the Prometheus
example with `promtool check config` (the Prometheus test of the Rust suite also runs it)."""
import pathlib
import shutil
import subprocess
import sys

from conftest import BINARY, ROOT

DEPLOY = ROOT / "deploy"


def test_the_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian systemd) is installed by .ci/run"
    unit = (DEPLOY / "bedrock-flow-exporter.service").read_text()
    assert "ExecStart=/usr/local/bin/bedrock-flow-exporter run" in unit
    # The binary as built, where the unit expects the installed one.
    local = tmp_path / "bedrock-flow-exporter.service"
    local.write_text(unit.replace("/usr/local/bin/bedrock-flow-exporter", str(BINARY)))
    run = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(unit.replace("/usr/local/bin/bedrock-flow-exporter", "/nonexistent/bedrock-flow-exporter"))
    assert subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True).returncode != 0, "the check can fail"


def test_the_kubernetes_manifests_validate(tmp_path):
    validate = pathlib.Path(sys.executable).parent / "kubernetes-validate"
    manifests = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
    kinds = {m.name: m.read_text() for m in manifests}
    assert "kind: StatefulSet" in kinds["statefulset.yaml"]
    assert "kind: Deployment" in kinds["deployment-replicas.yaml"] and "replicas: 2" in kinds["deployment-replicas.yaml"]
    assert "BEDROCK_FLOW_EXPORTER_STATE_URL" in kinds["deployment-replicas.yaml"] and "secretKeyRef" in kinds["deployment-replicas.yaml"]
    run = subprocess.run([str(validate), *map(str, manifests)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(kinds["statefulset.yaml"].replace("replicas: 1", "replicas: one"))
    assert subprocess.run([str(validate), str(broken)], capture_output=True, text=True).returncode != 0, "the check can fail"


def test_the_prometheus_example_checks():
    run = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus.yml")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "11 rules found" in run.stdout

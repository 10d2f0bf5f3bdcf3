"""docker/: the compose files parse, use the project's image, and run the commands the README documents.
(No Docker engine runs here, so the files are checked, not started.)"""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def compose(name: str) -> dict:
    return yaml.safe_load((ROOT / "docker" / name).read_text())


@pytest.mark.parametrize("name, engine, flag, address", [
    ("compose.ray.yaml", "ray", "--address", "ray-head:6379"),
    ("compose.spark.yaml", "spark", "--master", "spark://spark-master:7077"),
])
def test_compose_file_runs_the_documented_pipeline(name, engine, flag, address):
    services = compose(name)["services"]
    assert len(services) == 3
    for service in services.values():
        assert service["image"] == "curate:cpu"
        assert (ROOT / "docker" / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert "../out:/work/out" in service["volumes"]
    driver = services["curate"]["command"]
    assert driver == ["run", "pipelines/laion_filter.yaml", "--engine", engine, flag, address]
    assert (ROOT / driver[1]).is_file()
    documented = f"docker compose -f docker/{name} run --rm curate {' '.join(driver)}"
    assert documented in README
    assert f"docker compose -f docker/{name} up -d" in README


def test_cluster_addresses_match_the_services():
    ray = compose("compose.ray.yaml")["services"]
    assert ray["ray-head"]["entrypoint"][:5] == ["ray", "start", "--head", "--port", "6379"]
    assert "ray-head:6379" in ray["ray-worker"]["entrypoint"]
    spark = compose("compose.spark.yaml")["services"]
    assert spark["spark-master"]["entrypoint"][-4:] == ["--host", "spark-master", "--port", "7077"]
    assert spark["spark-worker"]["entrypoint"][-1] == "spark://spark-master:7077"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_images_install_the_package_with_its_cluster_extras(dockerfile):
    text = (ROOT / "docker" / dockerfile).read_text()
    assert "'.[ray,spark" in text and 'ENTRYPOINT ["curate"]' in text
    for copied in ("curate", "train", "pipelines"):
        assert f"COPY {copied} {copied}" in text

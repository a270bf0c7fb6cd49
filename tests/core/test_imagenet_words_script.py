"""bin/imagenet-words makes the shipped mapping from ImageNet classes to broad words."""
import subprocess
import sys
from pathlib import Path

from core import imagenet_words

ROOT = Path(__file__).resolve().parents[2]


def test_the_script_makes_the_shipped_file_again_from_wordnet(tmp_path):
    output = tmp_path / "words.json"

    proc = subprocess.run([sys.executable, str(ROOT / "bin" / "imagenet-words"), "--output", str(output)],
                          capture_output=True, text=True, timeout=120)

    assert proc.returncode == 0, proc.stderr
    assert "0 without a WordNet noun" in proc.stdout
    assert output.read_text() == imagenet_words.WORDS_FILE.read_text()


def test_the_script_says_how_to_get_wordnet_when_it_is_missing(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bin" / "imagenet-words"), "--wordnet", str(tmp_path),
                           "--output", str(tmp_path / "words.json")], capture_output=True, text=True, timeout=60)

    assert proc.returncode == 1
    assert "apt-get install wordnet-base" in proc.stderr
    assert not (tmp_path / "words.json").exists()

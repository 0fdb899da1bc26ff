"""ci-gate: a pre-deployment backdoor gate for prompt-tuned CLIP models (CLIP-Inspector)."""

__version__ = "0.1.0"

#: Where ci-gate is documented: the GitHub repository that publishes the action
#: (``uses: <owner>/ci-gate@v1``), whose README describes the tool. The one place the address is
#: written; SARIF's ``tool.driver.informationUri`` comes from here. It must be an absolute https
#: URL (GitHub's SARIF validation rejects a relative one). None until the repository is published:
#: reports then leave the optional link out rather than point at an address nobody has checked.
PROJECT_URL: str | None = None

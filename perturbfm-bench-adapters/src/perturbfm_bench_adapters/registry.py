"""Registry of public perturbation datasets that ``pfm-bench data fetch`` knows.

Every URL below was copied from the source named in ``url_source`` (the code
that downloads it upstream); none is guessed. ``sha256`` is set only where the
digest is genuinely known (the PerturBench devel file, whose digest the
project's shared-data README records); elsewhere it is ``None`` and ``fetch``
refuses to import unless the user passes ``--sha256`` or ``--allow-unverified``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from perturbfm.errors import ConfigError

GEARS_SRC = "snap-stanford/GEARS gears/pertdata.py (PertData.load)"
SCPERTURB_LICENCE = "CC BY 4.0 (scPerturb Zenodo record); original data under the study's terms"
NORMAN_CITATION = ("Norman et al., Exploring genetic interaction manifolds constructed from rich single-cell "
                   "phenotypes, Science 365:786-793 (2019)")
NORMAN_DOI = "10.1126/science.aax4438"


@dataclass(frozen=True)
class RegistryEntry:
    """One downloadable dataset.

    Attributes:
        url: the public download URL (``None`` where none could be confirmed).
        url_source: where the URL was found.
        filename: the name the download is saved under.
        mirror_path: path of the file below a ``--base-url`` mirror (default: ``filename``).
        sha256: expected digest of the download, or ``None`` when not known.
        archive_member: for zip/tar downloads, the ``.h5ad`` inside to import.
        adapter / options: how the file is imported.
    """

    name: str
    title: str
    url: str | None
    url_source: str
    filename: str
    sha256: str | None
    licence: str
    citation: str
    doi: str | None
    adapter: str
    options: dict[str, Any] = field(default_factory=dict)
    archive_member: str | None = None
    mirror_path: str | None = None
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_ENTRIES = [
    RegistryEntry(
        name="perturbench-devel",
        title="PerturBench development file: Norman 2019 K562 CRISPRa subset + McFaline-Figueroa 2023 CRISPRi "
              "(3 glioma lines)",
        url="https://raw.githubusercontent.com/altoslabs/perturbench/main/src/perturbench/data/resources/devel.h5ad",
        url_source="altoslabs/perturbench: file src/perturbench/data/resources/devel.h5ad, named by "
                   "src/perturbench/configs/data/devel.yaml (datapath); branch 'main' assumed",
        filename="norman19_mcfaline23_devel.h5ad",
        mirror_path="perturbench_devel/norman19_mcfaline23_devel.h5ad",
        sha256="220998f5630c813228c8661c86dd52244b9ac87127511289af90e0d900d8429b",
        licence="BSD-3-Clause (PerturBench, Altos Labs)",
        citation="Wu et al., PerturBench: Benchmarking machine learning models for cellular perturbation analysis "
                 "(2024); data: " + NORMAN_CITATION + "; McFaline-Figueroa et al., Cell Genomics (2024)",
        doi="10.48550/arXiv.2408.10609",
        adapter="perturbench",
        options={"perturbation_key": "condition", "control": "control", "combo_delimiter": "+",
                 "context_keys": ["cell_type"]},
        notes="sha256 from the project's shared-data README (file perturbench_devel/norman19_mcfaline23_devel.h5ad)",
    ),
    RegistryEntry(
        name="norman2019-gears",
        title="Norman 2019 K562 CRISPRa singles and doubles, GEARS preprocessing",
        url="https://dataverse.harvard.edu/api/access/datafile/6154020",
        url_source=GEARS_SRC + " for data_name='norman'",
        filename="norman2019_gears.zip", archive_member="norman/perturb_processed.h5ad",
        sha256=None, licence="see the Harvard Dataverse record (GEARS, Roohani et al.)",
        citation=NORMAN_CITATION + "; preprocessing: Roohani et al., Nat. Biotechnol. 42:927-935 (2024)",
        doi=NORMAN_DOI, adapter="gears", options={},
        notes="zip archive; member path per GEARS' layout (<data_name>/perturb_processed.h5ad), not verified "
              "here: fetch falls back to the one member named perturb_processed.h5ad",
    ),
    RegistryEntry(
        name="norman2019-perturbench",
        title="Norman 2019 K562 CRISPRa, PerturBench preprocessing",
        url="https://huggingface.co/datasets/altoslabs/perturbench/resolve/main/norman19_preprocessed.h5ad.gz",
        url_source="altoslabs/perturbench src/perturbench/data/accessors/norman19.py (dataset_hf_url)",
        filename="norman19_preprocessed.h5ad.gz", sha256=None,
        licence="BSD-3-Clause code; data per the Hugging Face dataset card altoslabs/perturbench",
        citation=NORMAN_CITATION, doi=NORMAN_DOI, adapter="perturbench",
        options={"context_keys": ["cell_type"]},
        notes="gzip-compressed h5ad (decompressed before import); raw source: "
              "https://zenodo.org/records/7041849/files/NormanWeissman2019_filtered.h5ad (scPerturb)",
    ),
    RegistryEntry(
        name="replogle2022-k562-essential",
        title="Replogle 2022 K562 essential-gene CRISPRi Perturb-seq, GEARS preprocessing (filtered)",
        url="https://dataverse.harvard.edu/api/access/datafile/7458695",
        url_source=GEARS_SRC + " for data_name='replogle_k562_essential' (newer GEARS releases)",
        filename="replogle_k562_essential_gears.zip", archive_member="replogle_k562_essential/perturb_processed.h5ad",
        sha256=None, licence="see the Harvard Dataverse record (GEARS)",
        citation="Replogle et al., Mapping information-rich genotype-phenotype landscapes with genome-scale "
                 "Perturb-seq, Cell 185:2559-2575 (2022)",
        doi="10.1016/j.cell.2022.05.013", adapter="gears", options={},
        notes="GEARS notes 'not the complete dataset and has been filtered'; the full scPerturb file is "
              "https://zenodo.org/records/7041849/files/ReplogleWeissman2022_K562_essential.h5ad",
    ),
    RegistryEntry(
        name="adamson2016-gears",
        title="Adamson 2016 UPR Perturb-seq (K562 CRISPRi), GEARS preprocessing",
        url="https://dataverse.harvard.edu/api/access/datafile/6154417",
        url_source=GEARS_SRC + " for data_name='adamson'",
        filename="adamson2016_gears.zip", archive_member="adamson/perturb_processed.h5ad",
        sha256=None, licence="see the Harvard Dataverse record (GEARS)",
        citation="Adamson et al., A multiplexed single-cell CRISPR screening platform enables systematic "
                 "dissection of the unfolded protein response, Cell 167:1867-1882 (2016)",
        doi="10.1016/j.cell.2016.11.048", adapter="gears", options={},
    ),
    RegistryEntry(
        name="sciplex3-perturbench",
        title="sci-Plex3 (Srivatsan 2020) chemical screen, scPerturb file as used by PerturBench",
        url="https://zenodo.org/records/7041849/files/SrivatsanTrapnell2020_sciplex3.h5ad?download=1",
        url_source="altoslabs/perturbench src/perturbench/data/accessors/srivatsan20.py (dataset_url)",
        filename="SrivatsanTrapnell2020_sciplex3.h5ad", sha256=None, licence=SCPERTURB_LICENCE,
        citation="Srivatsan et al., Massively multiplex chemical transcriptomics at single-cell resolution, "
                 "Science 367:45-51 (2020); scPerturb: Peidli et al., Nat. Methods 21:531-540 (2024)",
        doi="10.1126/science.aax6234", adapter="scperturb",
        options={"context_keys": ["cell_line"], "covariate_keys": ["dose_value"], "perturbation_kind": "chemical"},
        notes="the raw scPerturb file PerturBench curates (its processed Hugging Face copy's URL was not "
              "found); PerturBench keeps dose_value 10000 only and maps Ensembl ids to symbols; dose_value "
              "fills pfm_dose. Compound names containing '+' (e.g. '(+)-JQ1') split in the core's canonical "
              "'+'-joined labels; PerturBench renames them first",
    ),
    RegistryEntry(
        name="kang2018",
        title="Kang 2018 PBMC IFN-beta stimulation (pertpy's processed counts)",
        url="https://figshare.com/ndownloader/files/34464122",
        url_source="scverse/pertpy pertpy/data/_datasets.py kang_2018() (also liana's kang_2018)",
        filename="kang_counts_25k.h5ad", sha256=None,
        licence="see the figshare record (pertpy)",
        citation="Kang et al., Multiplexed droplet single-cell RNA-sequencing using natural genetic variation, "
                 "Nat. Biotechnol. 36:89-94 (2018)",
        doi="10.1038/nbt.4042", adapter="anndata",
        options={"perturbation_key": "label", "control": "ctrl", "context_keys": ["cell_type"],
                 "perturbation_kind": "other"},
        notes="obs 'label' is ctrl/stim: the 'perturbation' is the stimulus 'stim', not a gene (kind 'other')",
    ),
]

REGISTRY: dict[str, RegistryEntry] = {e.name: e for e in _ENTRIES}


def get_entry(name: str) -> RegistryEntry:
    """The entry called ``name`` (ConfigError listing the known names otherwise)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"no dataset {name!r} in the registry", field="name",
                          fix=f"use one of: {', '.join(sorted(REGISTRY))}") from None


def entry_by_sha256(sha256: str | None) -> RegistryEntry | None:
    """The entry whose known digest is ``sha256``, if any."""
    if not sha256:
        return None
    return next((e for e in _ENTRIES if e.sha256 and e.sha256 == sha256.lower()), None)

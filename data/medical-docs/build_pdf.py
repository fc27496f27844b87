"""Rebuild deep-vein-thrombosis.pdf for the embx demo collection data/medical-docs/.

Requires fpdf2 (`pip install fpdf2`). fpdf2 is needed ONLY to rebuild this PDF;
it is not a dependency of the embx project itself, and the committed PDF can be
used as-is.

Usage (from any directory):
    python data/medical-docs/build_pdf.py

The document text below is original, project-written patient-education text
(see SOURCE.md). It is not medical advice. This script is not part of the corpus.
The PDF is written next to this script. Headings are set as bold lines, the
title is stored in the PDF metadata, and all text is real (extractable) text.
Core PDF fonts only cover Latin-1, so keep the text plain ASCII.
"""

from datetime import datetime, timezone
from pathlib import Path

from fpdf import FPDF

TITLE = "Deep Vein Thrombosis (DVT)"
SPECIALTY = "haematology"
AUDIENCE = "patients"
UPDATED = "2026-10-01"
OUTPUT = Path(__file__).resolve().parent / "deep-vein-thrombosis.pdf"

SECTIONS = [
    (
        "Overview",
        [
            "A deep vein thrombosis (DVT) is a blood clot that forms in one of the deep veins, "
            "usually in the calf or thigh. DVT and pulmonary embolism together are known as venous "
            "thromboembolism (VTE). The main danger is that part of the clot breaks off and travels "
            "to the lungs, causing a pulmonary embolism. About one to two in every 1,000 adults "
            "develop venous thromboembolism each year. Prompt diagnosis and anticoagulant treatment "
            "greatly reduce the risk of serious complications.",
        ],
    ),
    (
        "Symptoms",
        [
            "DVT usually affects one leg, causing pain, tenderness and swelling in the calf or thigh. "
            "The affected leg may feel warm, and the skin may look red or darker than usual. "
            "Calf swelling of 3 centimetres or more compared with the other leg is a recognised "
            "clinical sign. Some clots cause few symptoms and are only found when a pulmonary "
            "embolism develops. Sudden breathlessness, sharp chest pain on breathing in or coughing "
            "up blood may mean a clot has reached the lungs.",
        ],
    ),
    (
        "Causes and risk factors",
        [
            "Clots form when blood flow slows, the vein wall is damaged or the blood clots more "
            "easily than normal. Major surgery, especially hip or knee replacement, and hospital "
            "admission with reduced mobility are strong risk factors. Active cancer and its "
            "treatment, pregnancy and the six weeks after giving birth all raise the risk. "
            "Combined hormonal contraception and hormone replacement therapy taken as tablets "
            "increase the tendency of blood to clot. Long-haul travel of more than four hours, "
            "obesity, smoking and a previous DVT or inherited thrombophilia also add to the risk.",
        ],
    ),
    (
        "Diagnosis",
        [
            "Doctors use a scoring system called the two-level Wells score to estimate how likely "
            "a DVT is. If a DVT is likely, a proximal leg vein ultrasound scan should be done "
            "within four hours. If DVT is unlikely, a D-dimer blood test is done, and a normal "
            "result usually rules out a clot. D-dimer can be raised for many other reasons, such "
            "as recent surgery, pregnancy, infection or older age. If the scan cannot be done "
            "quickly, interim anticoagulant treatment is usually started while you wait.",
        ],
    ),
    (
        "Treatment",
        [
            "Most people are treated at home with a direct oral anticoagulant such as apixaban or "
            "rivaroxaban. Low-molecular-weight heparin injections are used in pregnancy and "
            "sometimes in people with cancer. Treatment normally lasts at least three months, and "
            "longer if there is no clear trigger for the clot. Anticoagulants increase bleeding "
            "risk, so avoid anti-inflammatory painkillers unless advised and carry an "
            "anticoagulant alert card. Walking and staying active are encouraged once treatment "
            "has started. Compression stockings are not routinely used to prevent post-thrombotic "
            "syndrome but may help with symptoms of leg swelling.",
        ],
    ),
    (
        "When to seek care",
        [
            "Call emergency services if you become suddenly breathless, have chest pain or cough "
            "up blood. Seek same-day care if one leg becomes painful, swollen and warm, especially "
            "after surgery or a long journey. While taking anticoagulants, seek urgent help for "
            "black stools, blood in your urine, vomiting blood or a severe headache. Contact your "
            "doctor if you miss doses or plan surgery, dental work or pregnancy while on treatment. "
            "Ask about preventive measures, such as heparin injections, before planned surgery or "
            "a hospital stay.",
        ],
    ),
]


def build(output: Path = OUTPUT) -> Path:
    """Write the PDF (title, bold headings, paragraphs) to `output` and return its path."""
    pdf = FPDF(format="A4")
    pdf.set_title(TITLE)
    pdf.set_author("embx project")
    pdf.set_subject(f"Patient information; specialty: {SPECIALTY}; audience: {AUDIENCE}")
    pdf.set_keywords(f"specialty={SPECIALTY} audience={AUDIENCE} updated={UPDATED}")
    pdf.set_creator("data/medical-docs/build_pdf.py (fpdf2)")
    # Fixed date so rebuilding gives the same metadata.
    pdf.set_creation_date(datetime(2026, 10, 1, tzinfo=timezone.utc))
    pdf.set_margins(20, 20, 20)
    pdf.set_auto_page_break(auto=True, margin=20)
    pdf.add_page()

    pdf.set_font("Helvetica", "B", 18)
    pdf.multi_cell(0, 9, TITLE, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "I", 9)
    pdf.multi_cell(
        0, 5, f"Specialty: {SPECIALTY}. Audience: {AUDIENCE}. Updated: {UPDATED}.", new_x="LMARGIN", new_y="NEXT"
    )
    pdf.ln(4)

    for heading, paragraphs in SECTIONS:
        pdf.set_font("Helvetica", "B", 13)
        pdf.multi_cell(0, 7, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(1)
        pdf.set_font("Helvetica", "", 11)
        for para in paragraphs:
            pdf.multi_cell(0, 5.5, para, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(3)

    pdf.output(str(output))
    return output


if __name__ == "__main__":
    print(f"wrote {build()}")

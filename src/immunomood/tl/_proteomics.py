"""Former home of donor_view, join_proteomics, cross_modal_associations and biomarker_panel.

Kept only while ``tl/_predict.py`` still imports ``donor_view`` from here; the code lives in ``_donor_view``,
``_join``, ``_associations``, ``_biomarker`` and the shared ``_donor_data``. Delete this file once ``_predict``
imports from ``._donor_view``.
"""

from ._donor_view import donor_view as donor_view

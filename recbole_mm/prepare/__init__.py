"""Data preparation: ``python -m recbole_mm.prepare <subcommand> ...``.

Every subcommand validates its input (one clear error naming the file and the fix), writes
each output atomically (temp file, then ``os.replace``), records a ``prepare_manifest.<command>.json``
of its sources and options, and does nothing on a rerun with the same inputs (``--force``
redoes it). Outputs go to ``<out>/<NAME>/`` where ``--out`` (alias ``--data_path``) is the
RecBole data root, default ``dataset``. Every command also writes or updates ``NAME.yaml`` there,
the dataset's config, so ``--dataset=NAME`` runs with no hand-written yaml.

  amazon   --reviews FILE --meta FILE [--images DIR --image-model DIR] --name NAME [--k-core 5]
           raw Amazon review data, 2014/2018/2023 release (detected) -> NAME.inter (deduplicated,
           k-core, time-ordered), NAME.item (text fields, image URL), text (and image) features.
           Details: ``python -m recbole_mm.prepare amazon --help``.
  mmrec    --src DIR --name NAME [--split loo|x_label]
           MMRec folder (NAME.inter with userID itemID rating timestamp x_label, image_feat.npy,
           text_feat.npy; row i = item i) -> NAME.inter (RecBole atomic) + feature copies.
           Split protocol: see ``recbole_mm.prepare.mmrec``.
  unisrec  --src DIR --name NAME [--model DIR]
           UniSRec/Amazon folder (NAME.train/valid/test.inter with item_id_list, NAME.text)
           -> NAME.inter (timestamp = position in the user's sequence), NAME.text and
           text_feat.npy (offline MiniLM, or a local model directory).
  text     --name NAME --field FIELD [--model DIR]
           text features for a RecBole dataset whose NAME.item (or NAME.text) has the field(s)
           -> text_feat.npy + text_item_ids.txt.
  images   --name NAME --dir DIR --model LOCAL_MODEL_DIR
           image features from DIR/<item token>.<jpg|png|...> with a local transformers vision
           model -> image_feat.npy + image_item_ids.txt; items without a readable image get no
           row (marked missing by the dataset).

Feature encoding (amazon, text, images) is batched, shows a progress bar, resumes after a kill
and never encodes the same content twice (chunks cached under NAME/feature_cache/).
"""

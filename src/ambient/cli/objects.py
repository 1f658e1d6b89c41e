"""Object commands: apply, get, delete, create namespace, version (kubectl-like).

Every command resolves kinds with `ambient.api.kinds.resolve_kind` (so po/pods/pod, svc, deploy, ...
all work), reads manifests with `ambient.api.manifests.load_manifests` (so the CLI and the server report
the same validation messages), and talks to the API server only through `ApiClient`.
Output follows kubectl: `pod/web created`, `pod "web" deleted`, "No resources found in default namespace."

`apply` and `create -f` take kubectl's `--validate=strict|warn|ignore` (true = strict, false = ignore;
strict by default): strict refuses unknown fields here already, naming the file, the document and the
field; warn and ignore leave them to the API server (`fieldValidation=Warn|Ignore`), which drops them, and
every `Warning` it answers is printed to stderr as kubectl does (`Warning: unknown field "spec.foo"`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ambient.cli.context import state
from ambient.cli.errors import CliError, UsageError

if TYPE_CHECKING:
    from ambient.api.kinds import KindInfo

_MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

NamespaceOpt = Annotated[
    str | None, typer.Option("--namespace", "-n", help='Namespace (default "default").', show_default=False)
]
ValidateOpt = Annotated[
    str,
    typer.Option(
        "--validate",
        help='Unknown fields: "strict" (or true) refuses the object, "warn" drops them with a warning, '
        '"ignore" (or false) drops them silently.',
        metavar="strict|warn|ignore",
    ),
]
_VALIDATE_MODES = {"strict": "Strict", "true": "Strict", "warn": "Warn", "ignore": "Ignore", "false": "Ignore"}
FilesOpt = Annotated[
    list[str] | None,
    typer.Option("--filename", "-f", help="Manifest file, directory of manifests, or - for stdin. Repeatable."),
]


def field_validation_mode(value: str) -> str:
    """kubectl's --validate value as the API's fieldValidation (Strict, Warn, Ignore)."""
    mode = _VALIDATE_MODES.get(value.strip().lower())
    if mode is None:
        raise UsageError(f'invalid --validate value "{value}"', hint="use one of: strict, warn, ignore, true, false")
    return mode


def print_warning(text: str) -> None:
    """How the CLI shows an API server warning (kubectl's format)."""
    sys.stderr.write(f"Warning: {text}\n")


def read_manifest_paths(
    paths: list[str], namespace: str | None = None, field_validation: str | None = "Strict",
    duplicates: str = "Strict",
) -> list[dict[str, Any]]:
    """Load and validate the objects of files, directories (their *.yaml/*.yml/*.json) and stdin (-).

    `field_validation` as `load_manifests`: "Strict" refuses unknown fields, None leaves them to the server.
    `duplicates`: fields written twice (only visible in the text, so judged here): Strict refuses them,
    Warn prints a warning, Ignore keeps the last value."""
    from ambient.api.manifests import load_manifests

    objects: list[dict[str, Any]] = []
    warnings: list[str] = []
    options: dict[str, Any] = {"namespace": namespace, "field_validation": field_validation,
                               "duplicates": duplicates, "warnings": warnings}
    for raw in paths:
        if raw == "-":
            objects += load_manifests(sys.stdin.read(), "STDIN", **options)
            continue
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in _MANIFEST_SUFFIXES and p.is_file())
            if not files:
                raise CliError(f'no manifests (*.yaml, *.yml, *.json) in directory "{raw}"')
        elif path.exists():
            files = [path]
        else:
            raise CliError(f'the path "{raw}" does not exist')
        for file in files:
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise CliError(f'cannot read "{file}": {exc}') from None
            objects += load_manifests(text, str(file), **options)
    for text in warnings:
        print_warning(text)
    return objects


def parse_targets(args: list[str]) -> tuple[list[KindInfo], list[str]]:
    """`KIND[,KIND] [NAME...]` or `KIND/NAME...` -> (kinds, names); names pair with kinds[i] for k/n form."""
    from ambient.api.kinds import resolve_kind

    if not args:
        raise UsageError("you must specify the type of resource", hint="e.g. `ambient get pods`")
    if "/" in args[0]:
        kinds, names = [], []
        for arg in args:
            kind, sep, name = arg.partition("/")
            if not sep or not kind or not name:
                raise UsageError(f'"{arg}": expected KIND/NAME when the first argument is KIND/NAME')
            kinds.append(resolve_kind(kind))
            names.append(name)
        return kinds, names
    kinds = [resolve_kind(k) for k in args[0].split(",") if k]
    if len(kinds) > 1 and len(args) > 1:
        raise UsageError("names cannot be given together with several kinds", hint="use KIND/NAME pairs")
    return kinds, list(args[1:])


def object_ref(obj: dict[str, Any]) -> tuple[KindInfo, str, str | None]:
    """(kind, name, namespace) of an object: the kind from apiVersion *and* kind, since two kinds share a
    name (Istio's networking.istio.io Gateway and the Gateway API's): going by `kind` alone would delete or
    name the other one."""
    from ambient.api.kinds import kind_for_manifest

    info = kind_for_manifest(obj.get("apiVersion"), obj["kind"])
    meta = obj.get("metadata") or {}
    return info, meta["name"], meta.get("namespace") if info.namespaced else None


def _ns(info: KindInfo, namespace: str | None) -> str | None:
    return (namespace or "default") if info.namespaced else None


# ----------------------------------------------------------------------------- apply


def apply(
    ctx: typer.Context,
    filename: FilesOpt = None,
    namespace: NamespaceOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only validate and print what would be applied.")]
    = False,
    validate: ValidateOpt = "strict",
) -> None:
    """Create or update objects from manifests (YAML or JSON; one request for all of them).

    Like kubectl apply: labels and annotations that the previous apply set and the manifest no longer has
    are removed; those added by controllers or `ambient label` are kept."""
    from ambient.cli.printers import display_name

    if not filename:
        raise UsageError("must specify -f FILE (a file, a directory, or - for stdin)")
    mode = field_validation_mode(validate)
    # Strict: refused here already, with the file and the document named. Warn/Ignore: unknown fields are
    # the server's to drop and warn about (a dry run does the same here).
    if mode == "Strict":
        objects = read_manifest_paths(filename, namespace, "Strict")
    elif dry_run:
        objects = _dry_run_objects(filename, namespace, mode)
    else:
        objects = read_manifest_paths(filename, namespace, None, mode)
    if not objects:
        raise CliError("no objects passed to apply", hint="the manifests contain only empty documents")
    if dry_run:
        for obj in objects:
            info, name, _ = object_ref(obj)
            typer.echo(f"{display_name(info, name)} validated (dry run)")
        return
    client = state(ctx).client()
    client.on_warning = print_warning
    if len(objects) >= 200 and sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True).status(f"applying {len(objects)} objects"):
            results = client.apply_many(objects, field_validation=mode)
    else:
        results = client.apply_many(objects, field_validation=mode)
    lines = []
    for obj, action in results:
        info, name, _ = object_ref(obj)
        lines.append(f"{display_name(info, name)} {action}\n")
    sys.stdout.write("".join(lines))


def _dry_run_objects(paths: list[str], namespace: str | None, mode: str) -> list[dict[str, Any]]:
    """A Warn/Ignore dry run: drop unknown fields locally, printing the warnings the server would send."""
    from ambient.api.validation import check_fields

    objects = read_manifest_paths(paths, namespace, None, mode)
    warnings: list[str] = []
    for obj in objects:
        info, name, ns = object_ref(obj)
        subject = f"{info.wire_kind} {ns + '/' if ns else ''}{name}"
        check_fields(obj, info.kind, mode, warnings, subject, name_in_warnings=True)
    for text in warnings:
        print_warning(text)
    return objects


# ----------------------------------------------------------------------------- get

_OUTPUTS = ("wide", "yaml", "json", "name", "jsonpath=TEMPLATE")


def _split_output(output: str | None) -> tuple[str | None, str | None]:
    """(format, jsonpath template): `-o jsonpath=...` / `-o jsonpath='...'` as kubectl takes them."""
    if output is None:
        return None, None
    fmt, sep, template = output.partition("=")
    if fmt == "jsonpath":
        if not sep or not template:
            raise UsageError("template format specified but no template given",
                             hint="e.g. -o jsonpath='{.items[*].metadata.name}'")
        if len(template) >= 2 and template[0] == template[-1] and template[0] in "'\"":
            template = template[1:-1]
        return "jsonpath", template
    if output not in _OUTPUTS:
        raise UsageError(f'unknown output format "{output}"', hint="use one of: " + ", ".join(_OUTPUTS))
    return output, None


def get(
    ctx: typer.Context,
    args: Annotated[list[str], typer.Argument(metavar="KIND[,KIND...] [NAME...] | KIND/NAME...")],
    namespace: NamespaceOpt = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A", help="List across namespaces.")]
    = False,
    output: Annotated[str | None, typer.Option("--output", "-o",
                                               help="wide|yaml|json|name|jsonpath=TEMPLATE")] = None,
    selector: Annotated[str | None, typer.Option("--selector", "-l", help="Label selector, e.g. app=web")]
    = None,
    show_labels: Annotated[bool, typer.Option("--show-labels", help="Add a LABELS column.")] = False,
    label_columns: Annotated[list[str] | None, typer.Option(
        "--label-columns", "-L", help="Label keys shown as columns (comma-separated or repeated).")] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="After listing, print every change (Ctrl-C "
                                        "stops).")] = False,
) -> None:
    """Show objects as a table (kubectl columns per kind), YAML, JSON, names or a JSONPath template."""
    from ambient.api.errors import NotFoundError
    from ambient.cli import output as out
    from ambient.cli.printers import build_table, display_name

    output, template = _split_output(output)
    columns = tuple(key.strip() for spec in label_columns or () for key in spec.split(",") if key.strip())
    kinds, names = parse_targets(args)
    client = state(ctx).client()
    groups: list[tuple[KindInfo, list[dict[str, Any]]]] = []
    failures: list[str] = []
    if names:
        pair_kinds = kinds if len(kinds) == len(names) else [kinds[0]] * len(names)
        for info, name in zip(pair_kinds, names, strict=True):
            try:
                obj = client.get(info.kind, name, _ns(info, namespace))
            except NotFoundError as exc:
                failures.append(exc.message)
                continue
            if groups and groups[-1][0] == info:
                groups[-1][1].append(obj)
            else:
                groups.append((info, [obj]))
    else:
        for info in kinds:
            ns = None if all_namespaces or not info.namespaced else (namespace or "default")
            items, _ = client.list(info.kind, namespace=ns, label_selector=selector)
            groups.append((info, items))

    everything = [obj for _, objs in groups for obj in objs]
    widths: list[int] = []
    if output == "jsonpath":
        from ambient.cli import jsonpath

        if everything or not failures:
            single = bool(names) and len(names) == 1 and len(everything) == 1
            sys.stdout.write(jsonpath.render(template or "", everything[0] if single else out.as_list(everything)))
    elif output in ("yaml", "json"):
        if everything or not failures:
            out.print_objects(everything, output, single=bool(names) and len(names) == 1)
    elif output == "name":
        sys.stdout.write("".join(f"{display_name(info, o['metadata']['name'])}\n" for info, objs in groups
                                 for o in objs))
    elif not everything and not names:
        where = "" if all_namespaces or not any(i.namespaced for i in kinds) else (
            f" in {namespace or 'default'} namespace"
        )
        sys.stderr.write(f"No resources found{where}.\n")
    else:
        first = True
        for info, objs in groups:
            if not objs:
                continue
            if not first:
                sys.stdout.write("\n")
            first = False
            headers, rows = build_table(
                info, objs, wide=output == "wide", all_namespaces=all_namespaces,
                show_kind=len(kinds) > 1, show_labels=show_labels, label_columns=columns,
            )
            out.print_table(headers, rows)
            widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    if failures:
        for message in failures[:-1]:
            out.error(message)
        raise CliError(failures[-1])
    if watch:
        if len(kinds) != 1 or len(names) > 1:
            raise UsageError("watch is only supported on individual resources and resource collections of "
                             "one kind")
        info = kinds[0]
        ns = None if all_namespaces or not info.namespaced else (namespace or "default")
        _watch_rows(state(ctx).client(), info, ns, names[0] if names else None, selector, output, template,
                    widths, dict(all_namespaces=all_namespaces, show_labels=show_labels, label_columns=columns))


def _watch_rows(client: Any, info: KindInfo, namespace: str | None, name: str | None, selector: str | None,
                output: str | None, template: str | None, widths: list[int], table: dict[str, Any]) -> None:
    """`get -w`: one row (or document) per change after the listing, until Ctrl-C or the server ends it."""
    from ambient.cli import output as out
    from ambient.cli.printers import build_table, display_name

    by_name = {"field_selector": f"metadata.name={name}"} if name else {}
    _, version = client.list(info.kind, namespace=namespace, label_selector=selector, **by_name)
    try:
        # One watch, as kubectl's: it ends when the server ends it (or with Ctrl-C).
        for event in client.watch(info.kind, namespace=namespace, resource_version=version,
                                  label_selector=selector, **by_name):
            obj = event.object
            if event.type == "BOOKMARK" or not obj:
                continue
            if output == "jsonpath":
                from ambient.cli import jsonpath

                sys.stdout.write(jsonpath.render(template or "", obj))
            elif output in ("yaml", "json"):
                if output == "yaml":
                    sys.stdout.write("---\n")
                out.print_objects([obj], output, single=True)
            elif output == "name":
                sys.stdout.write(f"{display_name(info, obj['metadata']['name'])}\n")
            else:
                headers, rows = build_table(info, [obj], wide=output == "wide", **table)
                cells = rows[0]
                sizes = widths if len(widths) == len(cells) else [len(h) for h in headers]
                last = len(cells) - 1
                sys.stdout.write("   ".join(c if i == last else c.ljust(sizes[i])
                                            for i, c in enumerate(cells)).rstrip() + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


# ----------------------------------------------------------------------------- delete


def delete(
    ctx: typer.Context,
    args: Annotated[list[str] | None, typer.Argument(metavar="[KIND NAME... | KIND/NAME...]")] = None,
    filename: FilesOpt = None,
    namespace: NamespaceOpt = None,
    selector: Annotated[str | None, typer.Option("--selector", "-l", help="Delete objects with these labels.")]
    = None,
    all_objects: Annotated[bool, typer.Option("--all", help="Delete every object of KIND in the namespace.")]
    = False,
    ignore_not_found: Annotated[bool, typer.Option("--ignore-not-found", help="Not-found is not an error.")]
    = False,
) -> None:
    """Delete objects named on the command line, selected by label, or listed in manifests."""
    from ambient.api.errors import NotFoundError
    from ambient.cli.output import error
    from ambient.cli.printers import display_name

    targets: list[tuple[KindInfo, str, str | None]] = []
    if filename:
        if args:
            raise UsageError("give either -f FILE or KIND NAME, not both")
        # Reverse file order: objects before their Namespace (which would delete them anyway), so a
        # manifest that was applied deletes cleanly without spurious not-found errors.
        # Only names matter here: a manifest with unknown fields still names what to delete (as kubectl).
        objects = read_manifest_paths(filename, namespace, None, "Ignore")
        targets = [object_ref(obj) for obj in reversed(objects)]
    elif args:
        kinds, names = parse_targets(args)
        client = state(ctx).client()
        if names and (selector or all_objects):
            raise UsageError("names cannot be combined with -l or --all")
        if names:
            pair_kinds = kinds if len(kinds) == len(names) else [kinds[0]] * len(names)
            targets = [(info, name, _ns(info, namespace)) for info, name in zip(pair_kinds, names, strict=True)]
        elif selector or all_objects:
            for info in kinds:
                items, _ = client.list(info.kind, namespace=_ns(info, namespace), label_selector=selector)
                targets += [object_ref(o) for o in items]
        else:
            raise UsageError("resource(s) were provided, but no name was specified",
                             hint="give NAME, KIND/NAME, -l SELECTOR or --all")
    else:
        raise UsageError("you must specify -f FILE or KIND NAME", hint="e.g. `ambient delete pod web`")

    client = state(ctx).client()
    failures: list[str] = []
    for info, name, ns in targets:
        try:
            client.delete(info.kind, name, ns)
        except NotFoundError as exc:
            if not ignore_not_found:
                failures.append(exc.message)
            continue
        prefix = display_name(info, name).rsplit("/", 1)[0]
        typer.echo(f'{prefix} "{name}" deleted')
    if not targets and (selector or all_objects):
        sys.stderr.write("No resources found\n")
    if failures:
        for message in failures[:-1]:
            error(message)
        raise CliError(failures[-1])


# ----------------------------------------------------------------------------- create, version

create_app = typer.Typer(help="Create objects from manifests (-f FILE), or one from the command line.",
                         no_args_is_help=True)


@create_app.callback(invoke_without_command=True)
def create(
    ctx: typer.Context,
    filename: FilesOpt = None,
    namespace: NamespaceOpt = None,
    validate: ValidateOpt = "strict",
) -> None:
    """Create objects from manifests, one request each (like kubectl create -f; existing ones are errors)."""
    from ambient.api.errors import AlreadyExistsError
    from ambient.cli.output import error
    from ambient.cli.printers import display_name

    if ctx.invoked_subcommand is not None:
        if filename:
            raise UsageError("give either -f FILE or a subcommand, not both")
        return
    if not filename:
        raise UsageError("must specify -f FILE (a file, a directory, or - for stdin), or a subcommand",
                         hint="e.g. `ambient create -f app.yaml` or `ambient create namespace shop`")
    mode = field_validation_mode(validate)
    objects = read_manifest_paths(filename, namespace, "Strict" if mode == "Strict" else None, mode)
    if not objects:
        raise CliError("no objects passed to create", hint="the manifests contain only empty documents")
    client = state(ctx).client()
    client.on_warning = print_warning
    failures: list[str] = []
    for obj in objects:
        try:
            created = client.create(obj, field_validation=mode)
        except AlreadyExistsError as exc:
            failures.append(exc.message)
            continue
        info, name, _ = object_ref(created)
        typer.echo(f"{display_name(info, name)} created")
    if failures:
        for message in failures[:-1]:
            error(message)
        raise CliError(failures[-1])


@create_app.command("namespace")
def create_namespace(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Namespace name.")]) -> None:
    """Create a namespace (alias: ns)."""
    from ambient.api.validation import validate_object

    obj = validate_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    state(ctx).client().create(obj)
    typer.echo(f"namespace/{name} created")


create_app.command("ns", hidden=True)(create_namespace)


def version() -> None:
    """Print the ambient version."""
    from ambient import __version__

    typer.echo(f"ambient version {__version__} (python {sys.version.split()[0]})")


def register(app: typer.Typer) -> None:
    panel = "Objects"
    app.command("apply", rich_help_panel=panel)(apply)
    app.command("get", rich_help_panel=panel)(get)
    app.command("delete", rich_help_panel=panel)(delete)
    app.add_typer(create_app, name="create", rich_help_panel=panel)
    app.command("version")(version)

#!/usr/bin/env bash
# Checks the README's codemap ("## Where things live"): every backticked path in its table
# must exist, and every item named after a path (`file.rs::item`, `file.rs::Type::method`)
# must be defined in that file. Run by CI (.ci/run); run it from anywhere.
#   scripts/check-codemap.sh
set -euo pipefail
cd "$(dirname "$0")/.."

readme=README.md
heading='## Where things live'
min_entries=10

fail() {
  echo "codemap: $*" >&2
  exit 1
}

[ -f "$readme" ] || fail "$readme not found"
grep -qx "$heading" "$readme" || fail "$readme has no '$heading' section"

# The table rows between the heading and the next `## ` heading.
rows=$(awk -v heading="$heading" '
  $0 == heading { inside = 1; next }
  inside && /^## / { exit }
  inside && /^\|/ && !/^\|[-:| ]+\|?[[:space:]]*$/ { print }
' "$readme")

# Top-level directories of the repository: a token is a path when it starts with one.
top_dirs=()
for dir in */; do
  # Build output is not part of the repository.
  [ "$dir" = target/ ] && continue
  top_dirs+=("${dir%/}")
done
is_top_dir() {
  local first=$1 dir
  for dir in "${top_dirs[@]}"; do
    [ "$dir" = "$first" ] && return 0
  done
  return 1
}

# Modifiers that may come before a definition's keyword: pub, pub(crate), async, const, ...
modifiers='(pub(\([^)]*\))?[[:space:]]+)?((async|const|unsafe|default|extern([[:space:]]+"[^"]*")?)[[:space:]]+)*'

# `NAME` is defined in `file` (fn, struct, enum, trait, type, const, static, mod, union,
# macro_rules!).
defines() {
  local file=$1 name=$2
  grep -Eq "^[[:space:]]*${modifiers}(fn|struct|enum|trait|type|const|static([[:space:]]+mut)?|mod|union)[[:space:]]+${name}\b" "$file" \
    || grep -Eq "^[[:space:]]*(#\[macro_export\][[:space:]]*)?macro_rules![[:space:]]*${name}\b" "$file"
}

# `NAME` is the subject of an `impl` block in `file`: `impl NAME`, `impl<T> NAME<T>`,
# `impl Trait for NAME`.
implements() {
  local file=$1 name=$2
  grep -Eq "^[[:space:]]*(unsafe[[:space:]]+)?impl\b[^{]*[[:space:]:]${name}\b" "$file"
}

# Module `NAME` declared in `file` lives in a file or folder next to it: `NAME.rs` or `NAME/`
# in the file's directory (for lib.rs, main.rs and mod.rs) or in the folder named after the file.
module_beside() {
  local file=$1 name=$2 dir base
  dir=$(dirname "$file")
  base=$(basename "$file" .rs)
  case "$base" in
    lib | main | mod) ;;
    *) dir="$dir/$base" ;;
  esac
  [ -f "$dir/$name.rs" ] || [ -d "$dir/$name" ]
}

failures=0
entries=0
report() {
  echo "codemap: README names $1, which does not exist${2:+ ($2)}" >&2
  failures=$((failures + 1))
}

while IFS= read -r token; do
  token=${token#\`}
  token=${token%\`}
  case "$token" in
    */*) ;;
    *) continue ;;
  esac
  [[ "$token" =~ ^[A-Za-z0-9_.-]+/[^[:space:]]*$ ]] || continue
  is_top_dir "${token%%/*}" || continue
  entries=$((entries + 1))

  path=${token%%::*}
  items=()
  if [ "$path" != "$token" ]; then
    rest=${token#*::}
    read -r -a items <<<"${rest//::/ }"
  fi

  if [ ! -e "$path" ]; then
    report "$token" "no such file or directory: $path"
    continue
  fi
  [ "${#items[@]}" -eq 0 ] && continue
  if [ ! -f "$path" ]; then
    report "$token" "$path is a directory, so it defines no items"
    continue
  fi

  last=${items[-1]}
  if [[ ! "$last" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
    report "$token" "'$last' is not an item name"
    continue
  fi
  if ! defines "$path" "$last"; then
    if [ "${#items[@]}" -eq 1 ] && module_beside "$path" "$last"; then
      :
    else
      report "$token" "nothing named '$last' is defined in $path"
      continue
    fi
  fi
  # Type::method (or a longer path): every component before the item is defined in the
  # file or is the subject of an impl there.
  for owner in "${items[@]:0:${#items[@]}-1}"; do
    if ! defines "$path" "$owner" && ! implements "$path" "$owner"; then
      report "$token" "'$owner' is neither defined nor implemented in $path"
      break
    fi
  done
done < <(grep -o '`[^`]*`' <<<"$rows" || true)

if [ "$failures" -gt 0 ]; then
  echo "codemap: $failures of $entries entries failed; fix the table in $readme ('$heading')" >&2
  exit 1
fi

# Every other repository path the documentation names (`tests/e2e/hostile.rs`, say) must
# exist too.
paths=0
while IFS= read -r token; do
  token=${token#\`}
  token=${token%\`}
  [[ "$token" =~ ^[A-Za-z0-9_.-]+/[^[:space:]{}*]*$ ]] || continue
  is_top_dir "${token%%/*}" || continue
  paths=$((paths + 1))
  path=${token%%::*}
  if [ ! -e "$path" ]; then
    echo "codemap: the documentation names $path, which does not exist" >&2
    failures=$((failures + 1))
  fi
done < <(grep -oh '`[^`]*`' "$readme" BENCHMARKS.md || true)
if [ "$failures" -gt 0 ]; then
  echo "codemap: $failures paths named in the documentation do not exist" >&2
  exit 1
fi
if [ "$entries" -lt "$min_entries" ]; then
  fail "only $entries entries in '$heading' (at least $min_entries expected)"
fi
echo "codemap: $entries entries checked, and $paths paths named elsewhere in the documentation"

#!/bin/sh
# bundle_openmpi.sh DEST - copy this machine's Open MPI 4.1 (Debian packages
# openmpi-bin, libopenmpi3, libpmix2) into DEST as a relocatable tree, so that
# `mpirun -np 2 doneshot ...` runs on a GPU machine that has no MPI installed
# (issue 12 item 7; bench/device_bundle.sh calls it).
#
# Layout: DEST mirrors the Debian prefix (/usr), which is what Open MPI's
# OPAL_PREFIX relocation expects (libdir, pkglibdir with the MCA plugins and
# pkgdatadir with the help texts are all below the prefix); PMIx, which Open
# MPI 4.1 uses as an external library, lives in DEST/pmix2 and is relocated
# with PMIX_PREFIX. Every shared library the launchers and plugins need
# outside glibc goes to DEST/lib. DEST/env.sh sets OPAL_PREFIX, PMIX_PREFIX,
# PATH and LD_LIBRARY_PATH: OMPI_BUNDLE=DEST; . DEST/env.sh; mpirun ...
# Source: Open MPI 4.1 FAQ "Can I install Open MPI in a different location
# than where it was built?" (OPAL_PREFIX); PMIx installdirs (PMIX_PREFIX).
# tests/test_bundle_mpi.sh checks the tree in a mount namespace where the
# system's Open MPI is hidden.
set -eu
DEST=${1:?usage: bundle_openmpi.sh DEST}
ARCH_LIB=/usr/lib/x86_64-linux-gnu
OMPI_LIB=$ARCH_LIB/openmpi/lib
PMIX=$ARCH_LIB/pmix2
for p in /usr/bin/orterun /usr/bin/orted "$OMPI_LIB/openmpi3" "$PMIX/lib/pmix" /usr/share/openmpi; do
    [ -e "$p" ] || { echo "bundle_openmpi.sh: $p not found (needs Debian's openmpi-bin 4.1 and libpmix2)" >&2; exit 2; }
done
rm -rf "$DEST"
mkdir -p "$DEST/bin" "$DEST/lib" "$DEST${OMPI_LIB#/usr}" "$DEST/share" "$DEST/pmix2/lib" "$DEST/pmix2/share"
cp -L /usr/bin/orterun "$DEST/bin/mpirun"
cp -L /usr/bin/orted /usr/bin/ompi_info "$DEST/bin/"
cp -a "$OMPI_LIB/openmpi3" "$DEST${OMPI_LIB#/usr}/"
cp -a /usr/share/openmpi "$DEST/share/"
cp -a "$PMIX/lib/pmix" "$DEST/pmix2/lib/"
cp -a "$PMIX/share/pmix" "$DEST/pmix2/share/" 2>/dev/null || true
[ -d "$PMIX/etc" ] && cp -a "$PMIX/etc" "$DEST/pmix2/"
# shared libraries outside glibc (and outside CUDA, which the device has)
find "$DEST/bin" "$DEST/lib" "$DEST/pmix2" -type f \( -name '*.so' -o -perm -u+x \) | while read -r f; do
    ldd "$f" 2>/dev/null || true
done | awk '/=> \// { print $3 }' | sort -u |
    grep -v -E '/(libc|libm|libdl|libpthread|librt|libresolv|libgcc_s|libstdc\+\+)\.so|/ld-linux|/libcu|/libnv' |
    while read -r so; do cp -L "$so" "$DEST/lib/"; done
cat >"$DEST/env.sh" <<'EOF'
# OMPI_BUNDLE=<this directory>; . "$OMPI_BUNDLE/env.sh"  - the bundled Open
# MPI replaces any system one
_d=${OMPI_BUNDLE:?set OMPI_BUNDLE to the bundle directory before sourcing env.sh}
export OPAL_PREFIX="$_d" PMIX_PREFIX="$_d/pmix2"
# PMIx 4.2 keeps its compiled-in plugin and help-text paths despite
# PMIX_PREFIX: name them
export PMIX_MCA_mca_base_component_path="$_d/pmix2/lib/pmix" PMIX_PKGDATADIR="$_d/pmix2/share/pmix"
export PATH="$_d/bin:$PATH" LD_LIBRARY_PATH="$_d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# the bundle has no system-wide MCA parameter file; say nothing about it
export OMPI_MCA_mca_base_component_show_load_errors=0
unset _d
EOF
du -sh "$DEST" | awk '{ print "bundled Open MPI: " $1 }'

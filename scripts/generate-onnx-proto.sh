#!/usr/bin/env bash
# Regenerates Sources/ONNXExport/Generated/onnx_subset.pb.swift from
# Sources/ONNXExport/Schema/onnx_subset.proto. Run it after editing the schema and commit both:
# the build never runs protoc (swift-protobuf's build plugin would add minutes to every clean
# build). Needs Debian's protobuf-compiler; protoc-gen-swift is built from the swift-protobuf
# version the package resolved, so the generated code matches the library it links.
set -euo pipefail
source "$(dirname "$0")/common.sh"
root=$(clm_root)
cd "$root"
clm_install_packages protobuf-compiler
clm_run_bounded 1800 swift build --product protoc-gen-swift >/dev/null
plugin="$(swift build --show-bin-path)/protoc-gen-swift"
mkdir -p Sources/ONNXExport/Generated
protoc --plugin=protoc-gen-swift="$plugin" --swift_opt=Visibility=Public \
    --swift_out=Sources/ONNXExport/Generated -I Sources/ONNXExport/Schema onnx_subset.proto
echo "wrote Sources/ONNXExport/Generated/onnx_subset.pb.swift"

#!/usr/bin/env bash
# Build and run the Java gRPC client with Debian's packages only (no Maven, no Gradle, no downloads).
#
# Lesson 07's client is lessons/07-choosing/java/PredictClient.java; this script is its build.
#
#   tools/java-client.sh check        # which Debian packages are missing? (exit 3 if any)
#   tools/java-client.sh              # protoc + javac into .cache/java-client/
#   tools/java-client.sh run --address 127.0.0.1:50051 5.1 3.5 1.4 0.2
#
# The steps are the ones Maven's protobuf plugin would hide: generate Java from the .proto,
# then compile our client against the generated code and the gRPC libraries.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
HERE="$REPO/lessons/07-choosing/java"
PROTOS="$REPO/protos"
BUILD="$REPO/.cache/java-client"
JARS="${JAVA_JARS:-/usr/share/java}"

# The libraries a gRPC client needs, as Debian names their jars (unversioned symlinks, so an
# upgrade of a package never breaks the build), and the package that ships each one.
LIBRARIES=(
    "grpc-api grpc-context grpc-core grpc-netty grpc-protobuf grpc-protobuf-lite grpc-stub:libgrpc-java"
    "protobuf:libprotobuf-java"
    "guava:libguava-java"
    "perfmark-api:libperfmark-java"
    # Only javac needs it: the generated stub is annotated @javax.annotation.Generated.
    "geronimo-annotation-1.3-spec:libgeronimo-annotation-1.3-spec-java"
    "netty-buffer netty-codec netty-codec-http netty-codec-http2 netty-common netty-handler netty-resolver netty-transport:libnetty-java"
)
TOOLS=("javac:default-jdk-headless" "java:default-jdk-headless" "protoc:protobuf-compiler"
       "grpc_java_plugin:protobuf-compiler-grpc-java-plugin")

missing_packages() {
    local entry name
    for entry in "${TOOLS[@]}"; do
        command -v "${entry%%:*}" >/dev/null || echo "${entry##*:}"
    done
    for entry in "${LIBRARIES[@]}"; do
        for name in ${entry%%:*}; do
            [ -e "$JARS/$name.jar" ] || { echo "${entry##*:}"; break; }
        done
    done
}

classpath() {
    local entry name path="$BUILD/classes"
    for entry in "${LIBRARIES[@]}"; do
        for name in ${entry%%:*}; do path="$path:$JARS/$name.jar"; done
    done
    echo "$path"
}

check() {
    local missing
    missing="$(missing_packages | sort -u | tr '\n' ' ')"
    if [ -n "$missing" ]; then
        echo "missing Debian packages: ${missing% }" >&2
        echo "install them with: sudo apt-get install ${missing% }" >&2
        exit 3
    fi
}

build() {
    check
    # Rebuild only when the client or the contract changed: a second run starts at once.
    if [ -e "$BUILD/classes/PredictClient.class" ] &&
       [ "$BUILD/classes/PredictClient.class" -nt "$HERE/PredictClient.java" ] &&
       [ "$BUILD/classes/PredictClient.class" -nt "$PROTOS/model.proto" ]; then
        return
    fi
    rm -rf "$BUILD"
    mkdir -p "$BUILD/generated" "$BUILD/classes"
    # Messages (--java_out) and the service stub (--grpc-java_out), package course.serving.
    protoc -I"$PROTOS" --java_out="$BUILD/generated" \
        --plugin=protoc-gen-grpc-java="$(command -v grpc_java_plugin)" --grpc-java_out="$BUILD/generated" \
        "$PROTOS/model.proto"
    find "$BUILD/generated" -name '*.java' > "$BUILD/sources.txt"
    echo "$HERE/PredictClient.java" >> "$BUILD/sources.txt"
    javac -J-XX:-UsePerfData -nowarn -d "$BUILD/classes" -cp "$(classpath)" @"$BUILD/sources.txt"
}

case "${1:-build}" in
    check) check ;;
    build) build ;;
    # -XX:-UsePerfData: the JVM keeps no statistics file in /tmp/hsperfdata_$USER (nothing left behind).
    run) shift; build; exec java -XX:-UsePerfData -cp "$(classpath)" PredictClient "$@" ;;
    *) echo "usage: $0 [check | build | run [--address host:port] [--timeout s] features...]" >&2; exit 64 ;;
esac

#!/usr/bin/env node
// Runs the Khronos glTF validator (npm package gltf-validator, installed by scripts/setup.sh into
// .tools/) on GLB/glTF files: `node scripts/validate_gltf.js FILE...`. Prints one JSON line per
// file, {"file", "errors", "warnings", "infos", "hints", "messages"}, and exits 1 when any file
// has an error or a warning (issue 22: every GLB the engine writes must have neither), else 0.
"use strict";

const fs = require("fs");
const path = require("path");

const TOOLS = path.join(__dirname, "..", ".tools", "node_modules");

function loadValidator() {
  try {
    return require(path.join(TOOLS, "gltf-validator"));
  } catch (error) {
    console.error(`The glTF validator is not installed in ${TOOLS} (${error.code || error.message}).`);
    console.error("Run `bash scripts/setup.sh` (it installs gltf-validator with npm).");
    process.exit(2);
  }
}

async function validate(validator, file) {
  const bytes = new Uint8Array(fs.readFileSync(file));
  const report = await validator.validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues: 0, // every message, so a test can say exactly what is wrong
    writeTimestamp: false,
    // External files (a .gltf's images) are read from beside it; a GLB needs none.
    externalResourceFunction: (uri) =>
      fs.promises.readFile(path.resolve(path.dirname(file), decodeURIComponent(uri))).then((data) => new Uint8Array(data)),
  });
  const issues = report.issues;
  return {
    file,
    errors: issues.numErrors,
    warnings: issues.numWarnings,
    infos: issues.numInfos,
    hints: issues.numHints,
    messages: issues.messages,
  };
}

async function main() {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    console.error("usage: node scripts/validate_gltf.js FILE.glb [FILE.gltf ...]");
    process.exit(2);
  }
  const validator = loadValidator();
  let clean = true;
  for (const file of files) {
    const result = await validate(validator, file);
    console.log(JSON.stringify(result));
    clean = clean && result.errors === 0 && result.warnings === 0;
  }
  process.exit(clean ? 0 : 1);
}

main().catch((error) => {
  console.error(`glTF validation failed to run: ${error}`);
  process.exit(2);
});

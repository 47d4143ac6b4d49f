// Builds the page into stylerun/web/static/ (where `stylerun export-web` copies it from):
// the sources in src/ as they are, and onnxruntime-web's WASM runtime from node_modules, at the
// version package-lock.json pins. Run `npm ci && npm run build` in web/ after changing either.
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, '..', 'stylerun', 'web', 'static');
const ort = join(here, 'node_modules', 'onnxruntime-web');
// The WASM build only: the module that loads it, its threaded runtime and the runtime's worker module.
const RUNTIME = ['ort.wasm.min.mjs', 'ort-wasm-simd-threaded.mjs', 'ort-wasm-simd-threaded.wasm'];

rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, 'ort'), { recursive: true });
cpSync(join(here, 'src'), out, { recursive: true });
for (const name of RUNTIME) cpSync(join(ort, 'dist', name), join(out, 'ort', name));
const { version, license } = JSON.parse(readFileSync(join(ort, 'package.json'), 'utf8'));
writeFileSync(join(out, 'ort', 'VERSION'), `${version}\n`);
writeFileSync(join(out, 'ort', 'NOTICE'), `onnxruntime-web ${version} (npm), ${license} License, Copyright (c) Microsoft Corporation\n`);
console.log(`built ${out} with onnxruntime-web ${version}`);

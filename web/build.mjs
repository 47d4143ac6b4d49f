// Vendors onnxruntime-web's WASM runtime, at the version package-lock.json pins, into
// stylerun/web/static/ort/, beside the page's own sources (plain ES modules, edited in place; no
// bundler). Run `npm ci && npm run build` in web/ after changing the pinned version.
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, '..', 'stylerun', 'web', 'static', 'ort');
const ort = join(here, 'node_modules', 'onnxruntime-web');
// The WASM build only: the module that loads it, its threaded runtime and the runtime's worker module.
const RUNTIME = ['ort.wasm.min.mjs', 'ort-wasm-simd-threaded.mjs', 'ort-wasm-simd-threaded.wasm'];

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
for (const name of RUNTIME) cpSync(join(ort, 'dist', name), join(out, name));
const { version, license } = JSON.parse(readFileSync(join(ort, 'package.json'), 'utf8'));
writeFileSync(join(out, 'VERSION'), `${version}\n`);
writeFileSync(join(out, 'NOTICE'), `onnxruntime-web ${version} (npm), ${license} License, Copyright (c) Microsoft Corporation\n`);
console.log(`vendored onnxruntime-web ${version} into ${out}`);
